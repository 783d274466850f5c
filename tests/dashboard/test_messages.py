"""The dashboard's message page against real servers: the search box finds a number in any notation
and a message id, and a message's page shows its timeline as the API does."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from tests.dashboard.conftest import AUTH, login
from tests.workers.conftest import Drain
from tests.workers.test_pipeline import gw_dlr, post

pytestmark = pytest.mark.integration


@pytest.fixture
def traffic(ingress_client: TestClient, drain: Drain) -> None:
    for report in (gw_dlr("DELIVERED", 120), gw_dlr("BUFFERED", 100),
                   {**gw_dlr("UNDELIVERABLE", 130, msg=1000002), "error": "Number not in service"}):
        post(ingress_client, "/webhooks/gatewayapi", report)
    drain()


def test_search_a_number_then_open_a_message(traffic: None, web: TestClient) -> None:
    assert web.get("/dashboard/messages").status_code == 303, "a session is needed"
    login(web)
    assert 'action="/dashboard/messages"' in web.get("/").text, "the search box is on the main page"
    found = web.get("/dashboard/messages", params={"q": "0045 8765 4321"})
    assert found.status_code == 200, found.text
    links = re.findall(r'href="(/dashboard/messages\?provider=gatewayapi&amp;ref=\d+)"', found.text)
    assert len(links) == 2
    page = web.get(links[-1].replace("&amp;", "&"))
    assert page.status_code == 200
    rows = re.findall(r"<tr class=\"(\w+)", page.text.split('id="timeline"')[1])
    assert rows == ["superseded", "current"]
    assert "DELIVERED" in page.text and "BUFFERED" in page.text
    by_id = web.get("/dashboard/messages", params={"q": "1000002"})
    assert "ref=1000002" in by_id.text and "Number not in service" not in by_id.text


def test_wrong_input_is_a_page_not_an_error(traffic: None, web: TestClient) -> None:
    assert web.get("/dashboard/messages", params={"provider": "nope", "q": "x"}, headers=AUTH).status_code == 422
    assert web.get("/dashboard/messages", params={"provider": "gatewayapi", "ref": "none"},
                   headers=AUTH).status_code == 404
    assert web.get("/dashboard/messages", params={"q": "x", "cursor": "bogus"}, headers=AUTH).status_code == 422
    assert web.get("/dashboard/messages", params={"provider": "cm", "ref": "a\x00b"}, headers=AUTH).status_code == 404
    assert web.get("/dashboard/messages", params={"q": "a\x00b"}, headers=AUTH).status_code == 422
    assert web.get("/dashboard/messages", params={"provider": "cm", "since": "nonsense"},
                   headers=AUTH).status_code == 422
