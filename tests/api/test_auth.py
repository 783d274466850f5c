"""Bearer tokens: missing or wrong → 401 and nothing more; labels, never secrets."""

from __future__ import annotations

import hashlib

import pytest
from starlette.testclient import TestClient

from api.auth import ApiTokens, bare_label, bearer
from shared.errors import ConfigError
from tests.api.conftest import BARE, SECRET

PATHS = [("GET", "/v1/consent/+31612345678"), ("POST", "/v1/consent/check"), ("GET", "/v1/consent/review"),
         ("POST", "/v1/consent/review/cm:inbound:h:x"), ("GET", "/v1/consent/changes"), ("GET", "/v1/nothing-here")]


@pytest.mark.integration
@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", f"Bearer {SECRET}x", f"Basic {SECRET}",
                                           f"Bearer {SECRET[:-1]}", SECRET, f"Bearer {SECRET} extra", "Bearer alice"])
def test_missing_or_wrong_token_is_401_with_no_detail(authorization: str | None, api: TestClient) -> None:
    for method, path in PATHS:
        headers = {"authorization": authorization} if authorization is not None else {}
        api.headers.pop("authorization", None)
        response = api.request(method, path, headers=headers, content=b'{"subjects": []}')
        assert response.status_code == 401, (method, path)
        assert response.json() == {"error": "unauthorized"}
        assert response.headers["www-authenticate"] == 'Bearer realm="hookstream"'


@pytest.mark.integration
def test_every_configured_token_works_and_the_scheme_is_case_insensitive(api: TestClient) -> None:
    for authorization in (f"Bearer {SECRET}", f"bearer {BARE}", f"BEARER  {SECRET}"):
        response = api.get("/v1/consent/changes", headers={"authorization": authorization})
        assert response.status_code == 200, authorization


@pytest.mark.integration
def test_the_openapi_document_is_public(api: TestClient) -> None:
    api.headers.pop("authorization", None)
    response = api.get("/openapi.json")
    assert response.status_code == 200
    assert response.json()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


@pytest.mark.integration
def test_probes_need_no_token(api: TestClient) -> None:
    api.headers.pop("authorization", None)
    assert api.get("/healthz").text == "ok"
    assert api.get("/readyz").text == "ready"


def test_labels_and_bare_secrets() -> None:
    tokens = ApiTokens.parse(f" alice:{SECRET} , {BARE},,ops.team@example:s3cr:et ")
    expected = "token-" + hashlib.sha256(BARE.encode()).hexdigest()[:8]
    assert tokens.labels == ("alice", expected, "ops.team@example")
    assert bare_label(BARE) == expected
    assert tokens.verify(SECRET) == "alice"
    assert tokens.verify(BARE) == expected
    assert tokens.verify("s3cr:et") == "ops.team@example"
    assert tokens.verify("nope") is None
    assert SECRET not in repr(tokens) and BARE not in str(tokens)


@pytest.mark.parametrize("raw, words", [
    ("a:x,a:y", "used twice"), ("a:x,b:x", "repeats the secret"), ("a:", "empty secret"),
    (":secret", "label"), ("bad label:secret", "label"),
])
def test_bad_token_lists_are_configuration_errors_that_name_no_secret(raw: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        ApiTokens.parse(raw)
    assert "secret" not in str(caught.value).replace("empty secret", "").replace("the secret", "")


def test_no_tokens() -> None:
    assert not ApiTokens.parse("") and not ApiTokens.from_env({})


@pytest.mark.parametrize("header, token", [("Bearer abc", "abc"), ("bearer   abc ", "abc"), ("Bearer a b", None),
                                           ("Token abc", None), (None, None), ("Bearer", None)])
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


@pytest.mark.parametrize("method,path,auth", [
    ("GET", "/v1/consent/%2B31612345678", True), ("GET", "/openapi.json", False), ("GET", "/nowhere", True),
    ("PUT", "/dashboard/data/flow", False), ("GET", "/logout", False), ("GET", "/v1/consent/check", False),
])
def test_every_answer_says_nosniff(method: str, path: str, auth: bool, api: TestClient) -> None:
    """Errors that Starlette builds (404, 405) and the API's own JSON alike: no content sniffing."""
    headers = {"authorization": f"Bearer {SECRET}"} if auth else {}
    response = api.request(method, path, headers=headers)
    assert response.headers["x-content-type-options"] == "nosniff", (response.status_code, response.headers)
