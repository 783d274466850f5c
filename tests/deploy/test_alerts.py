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
    spec = tmp_path / "consent_test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([promtool, "test", "rules", str(spec)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
