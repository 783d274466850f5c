"""Security hygiene: what the processes log, what the project depends on, what SECURITY.md promises.

Every scenario of the suite already scans its processes' logs (Pipeline.verify). Here the logs
are provoked on purpose: refusals (401/403/413), dead letters, a record the database refuses,
Postgres and Redis outages, at the default level and at DEBUG. No phone number in clear, no
message body, no query string, no secret may appear.
"""

from __future__ import annotations

import re
import tomllib

import httpx
import pytest

from tests.faults.conftest import PipelineFactory
from tests.faults.harness import ROOT, Load, Pipeline, Req, Requests, Secrets, count, scan_logs

MARKER = "Hygiene marker body 7c1e: do not log me"
PHONE = "31687654321"


def provoke(pipeline: Pipeline, requests: Requests, secrets: Secrets) -> None:
    """Requests that make every process log: refusals, dead letters, a record Postgres refuses."""
    base = pipeline.url
    with httpx.Client(timeout=60) as client:
        mo = f"numero=36034&message={MARKER.replace(' ', '+')}&emetteur={PHONE}&date_reception=25032025-095217"
        # Refused: no token (401), a body over the limit (413), unknown route (404).
        assert client.get(f"{base}/webhooks/smsmode/mo?{mo}&smsID=H1&responseID=H1").status_code == 401
        assert client.post(f"{base}/webhooks/mx2?token={secrets.mx2_token}", content=b"x" * 70_000).status_code == 413
        assert client.get(f"{base}/webhooks/nope?{mo}").status_code == 404
        # Stored: a normal MO, garbage (a dead letter), a NUL id (Postgres refuses it: bisected and dead-lettered).
        for query in (f"{mo}&smsID=H2&responseID=H2", f"{mo}&smsID=H3&responseID=%00", "numero=%ff&message=%00"):
            req = requests.sign(Req("GET", "/webhooks/smsmode/mo", query, b"", {}))
            assert client.get(f"{base}{req.path}?{req.query}").status_code == 200
        body = f'{{"from": "+{PHONE}", "to": "3669", "body": "{MARKER}", "reference": {{"bad": 1}}}}'.encode()
        req = requests.sign(Req("POST", "/webhooks/cm/mo", "", body, {"content-type": "application/json"}))
        assert client.post(f"{base}{req.path}", content=body, headers=req.headers).status_code == 200
    count("bad_inputs_tried", 6)


def hygiene_run(make_pipeline: PipelineFactory, requests: Requests, secrets: Secrets, every_fault: bool,
                **env: str) -> None:
    pipeline = make_pipeline(**env)
    load = Load(pipeline.url, requests, rate=80, seed=31).start()
    provoke(pipeline, requests, secrets)
    pipeline.wait_processed(80)  # the provoked records are in the workers' hands before the outage
    pipeline.stop_postgres(2)
    if every_fault:
        pipeline.wait_processed(80)
        pipeline.restart_redis(1.5, hard=True)
        pipeline.wait_processed(80)
        pipeline.kill_worker_mid_batch()
    load.stop()
    load.texts.add(MARKER)
    load.phones.add(PHONE)
    pipeline.wait_drained()
    level = env.get("HOOKSTREAM_LOG_LEVEL", "INFO")
    # verify scans every process's log for phone numbers, bodies, query strings and secrets
    pipeline.verify(load, label=f"log hygiene at {level}")
    logs = pipeline.logs()
    assert any("dead-lettering" in text for text in logs.values()), "the refused record was logged (without data)"
    assert not scan_logs(logs, secrets, load, extra_texts=[MARKER, "responseID=", "emetteur="])


def test_logs_hold_no_phone_number_body_query_or_secret(make_pipeline: PipelineFactory, requests_: Requests,
                                                       secrets: Secrets) -> None:
    hygiene_run(make_pipeline, requests_, secrets, every_fault=False)


@pytest.mark.faults_long
@pytest.mark.timeout(300)
def test_long_logs_stay_clean_at_debug_level(make_pipeline: PipelineFactory, requests_: Requests,
                                             secrets: Secrets) -> None:
    hygiene_run(make_pipeline, requests_, secrets, every_fault=True, HOOKSTREAM_LOG_LEVEL="DEBUG")


def test_every_dependency_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    loose = [req for req in requirements if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z0-9,_\-]+\])?==[0-9][\w.]*", req)]
    assert not loose, f"not pinned with ==: {loose}"
    assert len(requirements) >= 15


def test_security_md_names_only_real_settings() -> None:
    """Operators configure what SECURITY.md says: every variable it names is read by the code."""
    text = (ROOT / "SECURITY.md").read_text()
    named = set(re.findall(r"HOOKSTREAM_[A-Z0-9_<>]+", text))
    assert named, "SECURITY.md names the settings operators must set"
    code = "\n".join(path.read_text() for path in [ROOT / "shared" / "settings.py", ROOT / "hookstream" / "cli.py"])
    for name in named:
        # Per-provider names are built as HOOKSTREAM_{provider.upper()}_ALLOWED_IPS / _TOKEN.
        name = re.sub(r"^HOOKSTREAM_(CM|SMSMODE|MX2|GATEWAYAPI)_(ALLOWED_IPS|TOKEN)$", r"HOOKSTREAM_<P>_\2", name)
        if "<P>" in name:
            pattern = name.replace("<P>", "{provider.upper()}")
            assert pattern in code or name.replace("<P>_", "") in code, name
        else:
            assert name in code, f"SECURITY.md names {name}, which nothing reads"
    for provider in ("CM", "smsmode", "Mx2", "GatewayAPI"):
        assert provider in text
