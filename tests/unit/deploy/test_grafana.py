"""deploy/grafana: the provisioned data sources and the dashboard. The dashboard is
valid JSON whose panels use the provisioned data sources; every PromQL query
parses (promtool) and names only metrics our metric modules register; every
ClickHouse query, with the plugin's macros and the dashboard's variables
substituted, runs against the schema `touchstream migrate` creates, and the KPI
panel re-aggregates numerators and denominators to the right value."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.unit.deploy.metricnames import (
    SCRAPE_SERIES,
    label_values,
    promql_metric_names,
    registered_metric_names,
)
from touchstream.schemas.records import KpiUpdate
from touchstream.sinks import metrics as sink_metrics
from touchstream.sinks.base import SourceRecord
from touchstream.sinks.clickhouse import ClickHouseSink, default_routes
from touchstream.sinks.migrate import migrate
from touchstream.streams.metrics import CHANNELS, KPIS

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "touchstream.yml"

# Grafana's time range for the substituted macros: 2026-11-02 00:00 to 2026-11-03 00:00 UTC.
FROM_S, TO_S, INTERVAL_S = 1_793_577_600, 1_793_664_000, 60
VARIABLES = {"channel": "web", "kpi": "nps", "__rate_interval": "1m", "__interval": "1m"}


def dashboard(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def targets(board: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [
        target
        for panel in panels(board)
        for target in panel.get("targets", [])
        if target["datasource"]["type"] == kind
    ]


def provisioned() -> dict[str, str]:
    """uid → type of the provisioned data sources."""
    document = yaml.safe_load(DATASOURCES.read_text())
    return {ds["uid"]: ds["type"] for ds in document["datasources"]}


def substitute_variables(text: str, values: dict[str, str]) -> str:
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return text


def clickhouse_sql(sql: str, database: str, values: dict[str, str] = VARIABLES) -> str:
    """The SQL the grafana-clickhouse-datasource plugin sends: its macros expanded as
    its pkg/macros does (DateTime from epoch seconds), then template variables."""
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m[1]} >= toDateTime({FROM_S}) AND {m[1]} <= toDateTime({TO_S})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\(([^)]+)\)",
        lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {INTERVAL_S} second)",
        sql,
    )
    sql = sql.replace("$__fromTime", f"toDateTime({FROM_S})")
    sql = sql.replace("$__toTime", f"toDateTime({TO_S})")
    sql = sql.replace("$__interval_s", str(INTERVAL_S))
    sql = substitute_variables(sql, {**values, "database": database})
    assert "$" not in sql, f"an unexpanded macro or variable in: {sql}"
    return sql


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_the_dashboard_is_valid_and_uses_the_provisioned_data_sources(path: Path) -> None:
    board = dashboard(path)
    sources = provisioned()
    assert sources == {
        "touchstream-prometheus": "prometheus",
        "touchstream-clickhouse": "grafana-clickhouse-datasource",
    }
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used_types = set()
    for panel in panels(board):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            uid, kind = target["datasource"]["uid"], target["datasource"]["type"]
            assert sources.get(uid) == kind, f"{panel['title']}: unknown data source {uid}"
            assert panel["datasource"] == target["datasource"]
            used_types.add(kind)
            if kind == "prometheus":
                assert target["expr"].strip()
            else:
                assert target["editorType"] == "sql" and target["rawSql"].strip()
                assert (target["format"], target["queryType"]) in ((0, "timeSeries"), (1, "table"))
    assert used_types == set(sources.values()), "pipeline health and KPIs use both sources"
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            assert sources.get(variable["datasource"]["uid"]) == variable["datasource"]["type"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_promql_names_only_registered_metrics(path: Path) -> None:
    known = registered_metric_names() | SCRAPE_SERIES
    exprs = [
        substitute_variables(t["expr"], VARIABLES) for t in targets(dashboard(path), "prometheus")
    ]
    assert exprs
    for expr in exprs:
        used = promql_metric_names(expr) | ({"up"} if re.search(r"\bup\{", expr) else set())
        assert used, f"no metric in {expr}"
        assert used <= known, f"unknown metrics {used - known} in {expr}"
        assert label_values(expr, "kpi") <= KPIS
        assert label_values(expr, "channel") <= CHANNELS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_promql_parses(path: Path, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: `apt-get install -y prometheus` (Debian), or `make test`")

    def check(exprs: list[str]) -> subprocess.CompletedProcess[str]:
        rules = [{"record": f"dashboard:query_{n}", "expr": e} for n, e in enumerate(exprs)]
        file = tmp_path / "dashboard.rules.yml"
        file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
        return subprocess.run(
            [promtool, "check", "rules", str(file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    exprs = [
        substitute_variables(t["expr"], VARIABLES) for t in targets(dashboard(path), "prometheus")
    ]
    result = check(exprs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert check(["sum(rate(touchstream_worker_messages_total[1m])"]).returncode != 0


@pytest.fixture(scope="module")
def database(ch: Any) -> str:
    """A migrated database holding KPI windows for nps at delivery on two channels."""
    name = f"g_{uuid.uuid4().hex[:8]}"
    migrate(ch, name)
    sink = ClickHouseSink(
        lambda: ch,
        name,
        default_routes({"events": "ev", "kpis": "kp", "dead_letters": "dl", "alerts": "al"}),
        sink_metrics.create(CollectorRegistry()),
    )
    sink.setup()
    start = datetime.fromtimestamp(FROM_S + 6 * 3600, UTC)
    rows = [("web", 30.0, 50.0), ("mobile_app", -5.0, 20.0), ("all", 25.0, 70.0)]
    for offset, (channel, numerator, denominator) in enumerate(rows):
        update = KpiUpdate(
            kpi="nps",
            channel=channel,
            touchpoint="delivery" if channel != "all" else "all",
            window_start=start,
            window_end=datetime.fromtimestamp(start.timestamp() + 3600, UTC),
            window_size_s=3600,
            numerator=numerator,
            denominator=denominator,
            value=100 * numerator / denominator,
            version=1,
            updated_at=start,
        )
        sink.add(SourceRecord("kp", 0, offset, None, update.model_dump_json().encode()))
    sink.flush()
    return name


def clickhouse_queries(board: dict[str, Any]) -> list[str]:
    sqls = [t["rawSql"] for t in targets(board, "grafana-clickhouse-datasource")]
    sqls += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return sqls


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_clickhouse_queries_run_against_the_migrated_schema(
    path: Path, ch: Any, database: str
) -> None:
    sqls = clickhouse_queries(dashboard(path))
    assert sqls
    for sql in sqls:
        for channel in ("all", "web"):
            query = clickhouse_sql(sql, database, {**VARIABLES, "channel": channel})
            ch.query(query)  # raises on an unknown table, column or function


def test_the_kpi_panel_re_aggregates_numerators_and_denominators(ch: Any, database: str) -> None:
    board = dashboard(GRAFANA / "dashboards" / "touchstream.json")
    (panel,) = [p for p in panels(board) if p["title"].startswith("$kpi per touchpoint")]
    sql = panel["targets"][0]["rawSql"]

    def rows(channel: str) -> list[tuple[Any, ...]]:
        query = clickhouse_sql(sql, database, {**VARIABLES, "channel": channel})
        return [tuple(r[1:]) for r in ch.query(query).result_rows]

    # all channels: the two channels' sums, never the overall row counted again
    assert rows("all") == [("delivery", 100 * (30.0 - 5.0) / (50.0 + 20.0))]
    assert rows("web") == [("delivery", 100 * 30.0 / 50.0)]
    assert rows("whatsapp") == []
