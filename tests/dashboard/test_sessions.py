"""A dashboard session ends at logout (the cookie, replayed, is refused) and when the secret of its
token changes (a rotation under the same label), not only when the label goes."""

from __future__ import annotations

import psycopg
from starlette.testclient import TestClient

from api.auth import ApiTokens
from api.dashboard import Dashboard
from api.dashboard.session import COOKIE, Signer
from shared.settings import Settings
from tests.dashboard.conftest import SECRET, combined_app, login
from tests.workers.conftest import settings  # noqa: F401


def browser(dash_tokens: ApiTokens, settings: Settings, signer: Signer) -> tuple[TestClient, Dashboard]:  # noqa: F811
    app, dash = combined_app(settings, dash_tokens, signer=signer, cache_ttl_s={"flow": 0, "deliverability": 0,
                                                                                 "consent": 0})
    return TestClient(app, base_url="http://testserver", follow_redirects=False), dash


def test_a_logged_out_session_cannot_be_replayed(settings: Settings, clean: psycopg.Connection) -> None:  # noqa: F811
    signer = Signer(b"s" * 32)
    client, dash = browser(ApiTokens.parse(f"ops:{SECRET}"), settings, signer)
    with client:
        csrf = login(client)
        cookie = client.cookies[COOKIE]
        assert client.post("/logout", data={"csrf": csrf}).status_code == 303
        client.cookies.set(COOKIE, cookie)  # an old copy of the cookie, replayed
        assert client.get("/").headers["location"] == "/login"
        assert client.get("/dashboard/data/flow").status_code == 401
    # another replica (the logout is in Redis) refuses it too
    other, other_dash = browser(ApiTokens.parse(f"ops:{SECRET}"), settings, signer)
    with other:
        other.cookies.set(COOKIE, cookie)
        assert other.get("/dashboard/data/flow").status_code == 401
    dash.close()
    other_dash.close()


def test_a_rotated_secret_ends_the_sessions_made_with_the_old_one(settings: Settings,  # noqa: F811
                                                                   clean: psycopg.Connection) -> None:
    signer = Signer(b"s" * 32)
    client, dash = browser(ApiTokens.parse(f"ops:{SECRET}"), settings, signer)
    with client:
        login(client)
        cookie = client.cookies[COOKIE]
    dash.close()
    same, same_dash = browser(ApiTokens.parse(f"ops:{SECRET}"), settings, signer)  # a restart, same secret
    with same:
        same.cookies.set(COOKIE, cookie)
        assert same.get("/dashboard/data/flow").status_code == 200
    same_dash.close()
    rotated, rotated_dash = browser(ApiTokens.parse("ops:new-secret-0123456789abcdef"), settings, signer)
    with rotated:
        rotated.cookies.set(COOKIE, cookie)
        assert rotated.get("/dashboard/data/flow").status_code == 401
    rotated_dash.close()
