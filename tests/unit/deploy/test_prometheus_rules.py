"""deploy/prometheus: the config and rules pass promtool, every alert's unit tests
pass, and each alert has a case where it fires and one where it does not (proved by
mutating the alert: never firing must break a test, always firing too).

promtool comes from Debian's `prometheus` package (`make test` installs it as root).
Without it these tests skip, and under CI=true a skip fails the run (conftest)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy.metricnames import (
    SCRAPE_SERIES,
    label_values,
    promql_metric_names,
    registered_metric_names,
)
from touchstream.streams.metrics import CHANNELS, KPIS, TOUCHPOINTS

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules" / "touchstream.rules.yml"
TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not found: `apt-get install -y prometheus` (Debian), or `make test`")
    return found


def run(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


ALERT_NAMES = [rule["alert"] for rule in alerts()]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_config_and_rules_pass_promtool_check(promtool: str) -> None:
    config = run(promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = run(promtool, "check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in rules.stdout


def test_the_rule_unit_tests_pass(promtool: str) -> None:
    assert TESTS, "no deploy/prometheus/tests/*.test.yml"
    result = run(promtool, "test", "rules", *(str(t) for t in TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TESTS)


def test_the_config_scrapes_both_jobs_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets["touchstream-sink"] == ["127.0.0.1:9464"]
    assert targets["touchstream-worker"] == ["127.0.0.1:9465"]
    loaded = {p for pattern in config["rule_files"] for p in PROMETHEUS.glob(pattern)}
    assert RULES in loaded


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_every_alert_has_severity_summary_description_and_a_runbook_section(name: str) -> None:
    rule = next(r for r in alerts() if r["alert"] == name)
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule.get("for"), "an alert without `for` pages on one bad scrape"
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    path, _, anchor = annotations["runbook_url"].partition("#")
    assert path == "docs/runbook.md"
    headings = re.findall(r"^#{2,3} (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    assert anchor in {github_anchor(h) for h in headings}, f"no runbook section for #{anchor}"
    assert anchor == github_anchor(name)


def test_rules_refer_only_to_registered_metrics_and_bounded_label_values() -> None:
    known = registered_metric_names() | SCRAPE_SERIES
    for rule in alerts():
        expr = rule["expr"]
        used = promql_metric_names(expr)
        assert used - known == set(), f"{rule['alert']}: unknown metrics {used - known}"
        assert label_values(expr, "kpi") <= KPIS
        assert label_values(expr, "channel") <= CHANNELS
        assert label_values(expr, "touchpoint") <= TOUCHPOINTS


def failures_with_every_alert_replaced(promtool: str, tmp_path: Path, expr: str) -> list[str]:
    """Run the unit tests against the rules with every alert's expr replaced by
    ``expr``; return promtool's failure blocks, one per failed assertion."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["expr"] = expr
    (tmp_path / "rules").mkdir(parents=True)
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copytree(PROMETHEUS / "tests", tmp_path / "tests")
    result = run(promtool, "test", "rules", *(str(tmp_path / "tests" / t.name) for t in TESTS))
    assert result.returncode != 0, f"every alert replaced by {expr!r}: the unit tests still pass"
    return (result.stdout + result.stderr).split("alertname: ")[1:]


def test_each_alert_has_a_case_where_it_fires(promtool: str, tmp_path: Path) -> None:
    """With every alert unable to fire, each alert's firing case must break."""
    failures = failures_with_every_alert_replaced(promtool, tmp_path, "vector(1) > 2")
    broken = {block.split(",")[0] for block in failures if "got:[]" in block}
    assert broken == set(ALERT_NAMES)


def test_each_alert_has_a_case_where_it_stays_silent(promtool: str, tmp_path: Path) -> None:
    """With every alert always true, each alert's silent case (exp_alerts: []) must break."""
    failures = failures_with_every_alert_replaced(promtool, tmp_path, "vector(1)")
    broken = {block.split(",")[0] for block in failures if "exp:[]" in block}
    assert broken == set(ALERT_NAMES)
