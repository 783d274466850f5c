"""The timeline and message search through the API and `hookstream message`, against real servers:
both answer from shared.timeline, so they agree."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from hookstream.cli import main
from shared.settings import Settings
from tests.api.conftest import get_json
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import gw_dlr, post

pytestmark = pytest.mark.integration


@pytest.fixture
def traffic(ingress_client: TestClient, drain: Drain) -> None:
    """A GatewayAPI message delivered, its queued report arriving last; a second message failed."""
    for report in (gw_dlr("DELIVERED", 120), gw_dlr("ENROUTE", 110), gw_dlr("BUFFERED", 100),
                   {**gw_dlr("UNDELIVERABLE", 130, msg=1000002), "error": "Number not in service"}):
        post(ingress_client, "/webhooks/gatewayapi", report)
    drain()


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOKSTREAM_DATABASE_URL", str(settings.database_url))
    monkeypatch.setenv("HOOKSTREAM_REDIS_URL", str(settings.redis_url))


def test_the_timeline_in_the_api_and_the_cli(traffic: None, api: TestClient, cli_env: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    shown = get_json(api, "/v1/messages/gatewayapi/1000001")
    steps = shown["statuses"]
    assert [(s["provider_status"], s["status"], s["outcome"], s["late"]) for s in steps] == [
        ("BUFFERED", "queued", "superseded", True), ("ENROUTE", "sent", "superseded", True),
        ("DELIVERED", "delivered", "current", False)]
    assert all(s["recipient"] == "+4587654321" and s["provider_time"] and s["received_at"] and s["archive"]
               for s in steps)
    assert main(["message", "show", "gatewayapi", "1000001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == shown
    assert main(["message", "show", "gatewayapi", "1000001"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[3].startswith("* ") and "'DELIVERED'" in lines[3] and "(late)" in lines[1]
    get_json(api, "/v1/messages/gatewayapi/nope", status=404)
    get_json(api, "/v1/messages/other/1000001", status=404)
    assert main(["message", "show", "gatewayapi", "nope"]) == 1


def test_search_by_number_in_any_notation_by_id_and_by_provider_with_pages(
        traffic: None, api: TestClient, cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    for notation in ("+4587654321", "004587654321", "4587654321", "+45 87 65 43 21"):
        found = get_json(api, "/v1/messages", params={"phone": notation})
        assert {(m["message_ref"], m["status"]) for m in found["messages"]} == {("1000001", "delivered"),
                                                                               ("1000002", "failed")}
    assert [m["provider"] for m in get_json(api, "/v1/messages", params={"ref": "1000002"})["messages"]] == [
        "gatewayapi"]
    first = get_json(api, "/v1/messages", params={"provider": "gatewayapi", "since": "1d", "limit": "1"})
    assert first["has_more"] and len(first["messages"]) == 1
    second = get_json(api, "/v1/messages", params={"provider": "gatewayapi", "limit": "1", "cursor": first["next"]})
    assert not second["has_more"] and second["next"] is None
    assert {first["messages"][0]["message_ref"], second["messages"][0]["message_ref"]} == {"1000001", "1000002"}
    assert get_json(api, "/v1/messages", params={"provider": "gatewayapi", "until": "2000-01-01"})["messages"] == []
    get_json(api, "/v1/messages", status=422)
    get_json(api, "/v1/messages", params={"phone": "hello"}, status=422)
    get_json(api, "/v1/messages", params={"provider": "gatewayapi", "cursor": "m1.garbage"}, status=422)
    # An id no message can have (NUL, over the id cap) is a client error, never a database one.
    for ref in ("1000002\x00", "9" * 257):
        get_json(api, "/v1/messages", params={"ref": ref}, status=422)
        get_json(api, f"/v1/messages/gatewayapi/{ref.replace(chr(0), '%00')}", status=404)
    assert main(["message", "search", "--phone", "0045 87654321", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["messages"] == get_json(
        api, "/v1/messages", params={"phone": "+4587654321"})["messages"]
    assert main(["message", "search", "--provider", "gatewayapi", "--limit", "1"]) == 0
    assert "more: --cursor m1." in capsys.readouterr().out

