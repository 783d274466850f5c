"""deploy/prometheus/alerts.yaml under `promtool check rules` and `promtool test rules`.

promtool comes with Debian's `prometheus` package: missing under CI is a failure, elsewhere a skip
(the same rule as tests/deploy/test_manifests.py). Times in a rule test count from the Unix epoch,
a Thursday 00:00 UTC: day 4 is a Monday.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.deploy.test_manifests import need_tool

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"
HOUR = 3600
DAY = 24 * HOUR


def age(queue: str, seconds: int, samples: int) -> dict[str, str]:
    """The gauge at a constant value, sampled each minute."""
    return {"series": f'hookstream_consent_unapplied_opt_out_age_seconds{{queue="{queue}"}}',
            "values": f"{seconds}x{samples}"}


def annotations(name: str) -> dict[str, str]:
    rules = [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    return next(rule["annotations"] for rule in rules if rule.get("alert") == name)


def firing(name: str, at: str, fires: bool, severity: str) -> dict[str, object]:
    alerts = [{"exp_labels": {"severity": severity}, "exp_annotations": annotations(name)}] if fires else []
    return {"eval_time": at, "alertname": name, "exp_alerts": alerts}


def test_the_consent_group_is_valid_and_alone_in_its_name() -> None:
    promtool = need_tool("promtool", "prometheus")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert [g["name"] for g in groups].count("consent") == 1


def test_the_revocation_clock_alerts(tmp_path: Path) -> None:
    promtool = need_tool("promtool", "prometheus")
    minutes_to_monday = 4 * DAY // 60 + 11 * 60  # Monday 11:00
    tests = [
        {   # an hour-old backlog pages after 5 minutes; a younger one does not
            "interval": "1m",
            "input_series": [age("stream", 3700, 30)],
            "alert_rule_test": [firing("ConsentOptOutUnapplied", "4m", False, "page"),
                                firing("ConsentOptOutUnapplied", "10m", True, "page")],
        },
        {"interval": "1m", "input_series": [age("stream", 3500, 30)],
         "alert_rule_test": [firing("ConsentOptOutUnapplied", "10m", False, "page")]},
        {   # Thursday: one day and a bit is overdue
            "interval": "1m", "input_series": [age("review", DAY + HOUR, 30)],
            "alert_rule_test": [firing("ConsentReviewOverdue", "20m", True, "ticket")],
        },
        {   # Monday 11:00: an item from Friday 12:00 (71 h) is not overdue; one from Friday 10:00 (73 h) is
            "interval": "1m",
            "input_series": [age("review", 71 * HOUR, minutes_to_monday + 30)],
            "alert_rule_test": [firing("ConsentReviewOverdue", f"{minutes_to_monday}m", False, "ticket")],
        },
        {"interval": "1m", "input_series": [age("review", 73 * HOUR, minutes_to_monday + 30)],
         "alert_rule_test": [firing("ConsentReviewOverdue", f"{minutes_to_monday}m", True, "ticket")]},
        {   # Saturday 11:00 (day 2): Friday 10:00's item (25 h) waits for Monday; Thursday's (49 h) is overdue
            "interval": "1m",
            "input_series": [age("review", 25 * HOUR, (2 * DAY + 11 * HOUR) // 60 + 30)],
            "alert_rule_test": [firing("ConsentReviewOverdue", f"{(2 * DAY + 11 * HOUR) // 60}m", False, "ticket")],
        },
        {"interval": "1m", "input_series": [age("review", 49 * HOUR, (2 * DAY + 11 * HOUR) // 60 + 30)],
         "alert_rule_test": [firing("ConsentReviewOverdue", f"{(2 * DAY + 11 * HOUR) // 60}m", True, "ticket")]},
    ]
    # The consent group alone: promtool evaluates every rule of its files at every step, and these
    # tests span days of one-minute steps.
    consent = tmp_path / "consent.yaml"
    consent.write_text(yaml.safe_dump({"groups": [g for g in yaml.safe_load(ALERTS.read_text())["groups"]
                                                  if g["name"] == "consent"]}))
    spec = tmp_path / "consent_test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(consent)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the pipeline and the providers -------------------------------------------------------------------


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inside = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{inside}}}" if inside else name, "values": values}


def alert(name: str, at: str, *labelled: dict[str, str]) -> dict[str, object]:
    """`name` at `at`, firing once per label set in `labelled` (none: not firing); the annotations are
    the rule's, with the alert's provider put in."""
    rule = next(r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if r.get("alert") == name)
    expected = []
    for labels in labelled:
        notes = {key: text.replace("{{ $labels.provider }}", labels.get("provider", ""))
                 for key, text in rule["annotations"].items()}
        expected.append({"exp_labels": {**rule["labels"], **labels}, "exp_annotations": notes})
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


def promtool_test(tmp_path: Path, tests: list[dict[str, object]], interval: str = "1m") -> None:
    promtool = need_tool("promtool", "prometheus")
    spec = tmp_path / "rules_test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": interval, "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


REQUESTS = "hookstream_ingress_requests_total"


def test_pipeline_alerts(tmp_path: Path) -> None:
    oldest = "hookstream_stream_oldest_pending_seconds"
    promtool_test(tmp_path, [
        {"interval": "1m", "input_series": [series(oldest, "700x20", shard="0"), series(oldest, "5x20", shard="1")],
         "alert_rule_test": [alert("HookstreamOldestPendingEntry", "3m"),
                             alert("HookstreamOldestPendingEntry", "10m", {})]},
        {"interval": "1m", "input_series": [series(oldest, "500x20", shard="0")],
         "alert_rule_test": [alert("HookstreamOldestPendingEntry", "15m")]},
        {   # one dead letter a minute, by the workers or by the dispatcher giving up; none is quiet
            "interval": "1m",
            "input_series": [series("hookstream_worker_dead_letters_total", "0+1x60", mode="live", provider="cm")],
            "alert_rule_test": [alert("HookstreamDeadLettersGrowing", "45m", {})]},
        {"interval": "1m", "input_series": [series("hookstream_dispatch_gave_up_total", "0+1x60")],
         "alert_rule_test": [alert("HookstreamDeadLettersGrowing", "45m", {})]},
        {"interval": "1m", "input_series": [
            series("hookstream_worker_dead_letters_total", "0+0x60", mode="live", provider="cm"),
            series("hookstream_worker_dead_letters_total", "0+5x60", mode="replay", provider="cm")],
         "alert_rule_test": [alert("HookstreamDeadLettersGrowing", "45m")]},
        {   # the worker target goes down at 10m; a run with no worker target at all
            "interval": "1m",
            "input_series": [series("up", "1x10 0x20", job="hookstream-worker", instance="w1:9101"),
                             series("up", "1x30", job="hookstream-ingress", instance="i1:8000")],
            "alert_rule_test": [alert("HookstreamWorkersAbsent", "8m"), alert("HookstreamWorkersAbsent", "20m", {})]},
        {"interval": "1m", "input_series": [series("up", "1x30", job="hookstream-api", instance="a:8080")],
         "alert_rule_test": [alert("HookstreamWorkersAbsent", "10m", {})]},
    ])


def test_ingress_and_provider_alerts(tmp_path: Path) -> None:
    def requests(outcome: str, values: str, provider: str = "cm") -> dict[str, str]:
        return series(REQUESTS, values, provider=provider, feed="status", outcome=outcome)

    promtool_test(tmp_path, [
        {   # 5 503s for 100 accepted a minute; a single one is no alert
            "interval": "1m",
            "input_series": [requests("accepted", "0+100x30"), requests("unavailable", "0+5x30")],
            "alert_rule_test": [alert("HookstreamIngressUnavailable", "15m", {})]},
        {"interval": "1m", "input_series": [requests("accepted", "0+100x30"), requests("unavailable", "0x10 1x20")],
         "alert_rule_test": [alert("HookstreamIngressUnavailable", "20m")]},
        {   # smsmode: a third of its requests refused; cm: a rare 401 among many
            "interval": "1m",
            "input_series": [requests("accepted", "0+10x40", "smsmode"), requests("unauthorized", "0+3x40", "smsmode"),
                             requests("forbidden", "0+2x40", "smsmode"), requests("accepted", "0+100x40"),
                             requests("unauthorized", "0x20 1x20")],
            "alert_rule_test": [alert("HookstreamProviderAuthFailures", "8m"),
                                alert("HookstreamProviderAuthFailures", "25m", {"provider": "smsmode"})]},
    ])


def test_a_provider_silent_against_the_same_hour_of_previous_days(tmp_path: Path) -> None:
    def accepted(provider: str, values: str) -> dict[str, str]:
        return series(REQUESTS, values, provider=provider, feed="status", outcome="accepted")

    steps_3_days = 3 * DAY // 600  # samples every 10 minutes
    promtool_test(tmp_path, [{
        "interval": "10m",
        "input_series": [
            # cm: 600 an hour for three days, then nothing for two hours
            accepted("cm", f"0+100x{steps_3_days} {100 * steps_3_days}x12"),
            # mx2: steady throughout; gatewayapi: 6 an hour, too few to judge, and then silent too
            accepted("mx2", f"0+100x{steps_3_days + 12}"),
            accepted("gatewayapi", f"0+1x{steps_3_days} {steps_3_days}x12"),
        ],
        "alert_rule_test": [alert("HookstreamProviderSilent", f"{3 * DAY // 60 + 20}m"),
                            alert("HookstreamProviderSilent", f"{3 * DAY // 60 + 110}m", {"provider": "cm"})],
    }], interval="10m")


def test_the_kubernetes_prometheus_rule_holds_the_same_groups() -> None:
    rule = yaml.safe_load((ALERTS.parents[1] / "kubernetes" / "prometheus-rule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_every_alert_has_a_severity_summary_and_description() -> None:
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in rules} >= {"HookstreamOldestPendingEntry", "HookstreamDeadLettersGrowing",
                                          "HookstreamWorkersAbsent", "HookstreamIngressUnavailable",
                                          "HookstreamProviderAuthFailures", "HookstreamProviderSilent"}
    for r in rules:
        assert r["labels"]["severity"] in ("page", "ticket") and r["annotations"]["summary"], r["alert"]
        assert r["annotations"]["description"], r["alert"]
