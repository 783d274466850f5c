"""The Grafana dashboard and the Prometheus that feeds it, checked against the real processes and tools.

- Every metric the dashboard's PromQL names is in the /metrics output of real `hookstream ingress`,
  `hookstream dispatch` and `hookstream worker` processes after real traffic (scraped here), and every
  label it groups or filters by is a label of those samples.
- `promtool check rules` parses every expression (as recording rules), `promtool check config` reads
  deploy/prometheus.yml, whose jobs name the Compose services and the ports the processes listen on.
- deploy/grafana/hookstream.json is a dashboard Grafana provisions: uid, panels with targets on the
  provisioned data source, a layout without overlaps; the Compose file mounts what the provisioning names.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hookstream.embedded import free_port
from shared.settings import Settings
from tests.deploy.test_manifests import need_tool
from tests.workers.test_pipeline import cm_mo, gw_dlr

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "hookstream.json"
PROMETHEUS = DEPLOY / "prometheus.yml"
METRIC = re.compile(r"\bhookstream_[a-z0-9_]+\b")
# What the issue asks the dashboard to show, by the metric that shows it.
REQUIRED = {
    "ingress rate": "hookstream_ingress_requests_total",
    "ingress latency": "hookstream_ingress_append_seconds_bucket",
    "append errors": "hookstream_ingress_append_errors_total",
    "lag": "hookstream_stream_lag",
    "pending": "hookstream_stream_pending",
    "batch latency": "hookstream_worker_batch_seconds_bucket",
    "events by kind": "hookstream_worker_events_total",
    "dead letters": "hookstream_worker_dead_letters_total",
    "consent changes": "hookstream_worker_consent_changes_total",
    "commit lag": "hookstream_worker_commit_lag_seconds_bucket",
}


@cache
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def compose() -> dict[str, Any]:
    return load_yaml(DEPLOY / "compose.yaml")  # type: ignore[no-any-return]


# -- the dashboard file ---------------------------------------------------------------------------


def test_the_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "hookstream" and board["title"] and isinstance(board["schemaVersion"], int)
    assert "id" not in board or board["id"] is None, "a provisioned dashboard must not carry a database id"
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    assert source["type"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert len(panels()) >= 10
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & mine, f"{panel['title']!r} overlaps another panel"
        cells |= mine
    for panel in panels():
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, panel["title"]
        assert panel["title"] and panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and METRIC.search(target["expr"]), (panel["title"], target)
            assert target.get("datasource", panel["datasource"])["uid"] == source["uid"]
    named = {m for expr in expressions() for m in METRIC.findall(expr)}
    missing = {topic: metric for topic, metric in REQUIRED.items() if metric not in named}
    assert not missing, f"the dashboard shows nothing of {missing}"


def test_promtool_parses_every_expression(tmp_path: Path) -> None:
    promtool = need_tool("promtool", "prometheus")
    rules = [{"record": f"hookstream:dashboard:{i}", "expr": expr.replace("$__rate_interval", "1m")}
             for i, expr in enumerate(expressions())]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout + result.stderr


# -- Prometheus and Compose -----------------------------------------------------------------------


def test_prometheus_config_passes_promtool_and_scrapes_every_process() -> None:
    promtool = need_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    services = compose()["services"]
    ingress_port = services["ingress"]["command"][services["ingress"]["command"].index("--port") + 1]
    api_port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    defaults = Settings()
    expected = {"ingress": int(ingress_port), "dispatch": defaults.dispatch_metrics_port,
                "worker": defaults.worker_metrics_port, "api": int(api_port)}
    scraped: dict[str, int] = {}
    for job in load_yaml(PROMETHEUS)["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            for name in sd["names"]:
                scraped[name] = sd["port"]
    assert scraped == expected
    for name in expected:  # a port set in the service's environment would move /metrics away
        assert not {"HOOKSTREAM_WORKER_METRICS_PORT", "HOOKSTREAM_DISPATCH_METRICS_PORT"} & set(
            services[name].get("environment") or {}), name
    assert services["worker"]["deploy"]["replicas"] >= 2  # every replica: found by DNS, not listed by hand

    # The alerting rules, where the container finds them: rule_files are relative to the config file,
    # and a mounted folder of deploy/ holds at least one file for each pattern.
    mounts = {volume.split(":")[1]: DEPLOY / volume.split(":")[0] for volume in services["prometheus"]["volumes"]
              if volume.startswith("./")}
    config_dir = Path([target for target, source in mounts.items() if source == PROMETHEUS][0]).parent
    patterns = load_yaml(PROMETHEUS)["rule_files"]
    assert patterns
    for pattern in patterns:
        inside = config_dir / pattern
        (target,) = [t for t in mounts if inside.is_relative_to(t) and mounts[t].is_dir()]
        assert list(mounts[target].glob(str(inside.relative_to(target)))), pattern


def test_compose_provisions_prometheus_and_grafana() -> None:
    services = compose()["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    config = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert f"./prometheus.yml:{config}:ro" in prometheus["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    (provider,) = load_yaml(GRAFANA / "provisioning" / "dashboards" / "hookstream.yaml")["providers"]
    mounted = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert Path(mounted["./grafana/hookstream.json"]).parent.as_posix() == provider["options"]["path"]
    assert (GRAFANA / "hookstream.json").is_file()
    (source,) = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in grafana["depends_on"]
    for service in (prometheus, grafana):
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"]), "metrics UIs stay on loopback"


# -- against the real processes ---------------------------------------------------------------------


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the process behind {url} exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout_s} s")


@pytest.fixture
def scrapes(redis_url: str, database_url: str, redis_client: redis.Redis,
            db: psycopg.Connection) -> Iterator[dict[str, str]]:
    """/metrics of real ingress, dispatch and worker processes after traffic of every kind went through them."""
    ports = {"ingress": free_port(), "dispatch": free_port(), "worker": free_port()}
    env = {**os.environ, "HOOKSTREAM_REDIS_URL": redis_url, "HOOKSTREAM_DATABASE_URL": database_url,
           "HOOKSTREAM_LOG_LEVEL": "ERROR", "HOOKSTREAM_CM_ALLOWED_IPS": "*", "HOOKSTREAM_GATEWAYAPI_ALLOWED_IPS": "*",
           "HOOKSTREAM_BATCH_WAIT_MS": "5"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cli = [sys.executable, "-m", "hookstream.cli"]
    procs = [
        subprocess.Popen([*cli, "ingress", "--host", "127.0.0.1", "--port", str(ports["ingress"])], env=env),
        subprocess.Popen([*cli, "dispatch", "--metrics-port", str(ports["dispatch"])], env=env),
        subprocess.Popen([*cli, "worker", "-n", "1", "--metrics-port", str(ports["worker"])], env=env),
    ]
    try:
        base = f"http://127.0.0.1:{ports['ingress']}"
        wait_http(base + "/healthz", procs[0])
        with httpx.Client(base_url=base, timeout=5) as client:
            for path, body in [("/webhooks/cm/mo", json.dumps(cm_mo("STOP", ref="g1")).encode()),
                               ("/webhooks/cm/mo", json.dumps(cm_mo("hello", ref="g2")).encode()),
                               ("/webhooks/gatewayapi", json.dumps(gw_dlr("DELIVERED", 100)).encode()),
                               ("/webhooks/mx2", b"{not json")]:
                assert client.post(path, content=body, headers={"content-type": "application/json"}).status_code == 200
        for name in ("dispatch", "worker"):
            wait_http(f"http://127.0.0.1:{ports[name]}/metrics", procs[1 if name == "dispatch" else 2])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            written = db.execute("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM dead_letters)"
                                 ).fetchone()
            # Rows written means the dispatcher made its group: only then ask it for pending entries.
            if written and written[0] >= 4 and not redis_client.xpending("hookstream:raw", "hookstream:workers")[
                    "pending"]:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the traffic was not processed in 30 s")
        time.sleep(1.2)  # the dispatcher refreshes its stream gauges about every second
        yield {name: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text for name, port in ports.items()}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def samples(text: str) -> dict[str, set[str]]:
    """Sample name → its label names, as Prometheus would store them."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def labels_used(expr: str) -> set[str]:
    used = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        used |= {label.strip() for label in group.split(",") if label.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        used |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return used


@pytest.mark.integration
def test_every_metric_the_dashboard_queries_is_exposed_by_the_processes(scrapes: dict[str, str]) -> None:
    exposed: dict[str, set[str]] = {}
    for text in scrapes.values():
        for metric, labels in samples(text).items():
            exposed.setdefault(metric, set()).update(labels)
    assert "hookstream_ingress_requests_total" in samples(scrapes["ingress"])
    assert "hookstream_stream_lag" in samples(scrapes["dispatch"])
    assert "hookstream_worker_consent_changes_total" in samples(scrapes["worker"])
    for panel in panels():
        for target in panel["targets"]:
            names = set(METRIC.findall(target["expr"]))
            missing = names - set(exposed)
            assert not missing, f"{panel['title']!r} queries {sorted(missing)}, which no process exposes"
            available = set().union(*(exposed[n] for n in names))
            unknown = labels_used(target["expr"]) - available
            assert not unknown, f"{panel['title']!r} uses label(s) {sorted(unknown)} that {sorted(names)} do not have"
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend <= available, f"{panel['title']!r}: legend names {sorted(legend - available)}"
