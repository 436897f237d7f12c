"""The CX page's routes on the embedded engine's HTTP interface: the page and its
files, the JSON API (named queries only, browser parameters whitelisted), the BI
user's read-only path, and authentication when passwords are set."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from touchstream.chhttp import EngineHTTP
from touchstream.settings import Settings, load_settings
from touchstream.sinks import named
from touchstream.sinks.client import connect
from touchstream.sinks.migrate import migrate

BI = ("touchstream_bi", "bi-secret")


@dataclass
class Server:
    settings: Settings
    port: int
    engine: EngineHTTP
    loop: asyncio.AbstractEventLoop

    def get(
        self, path: str, params: dict[str, str] | None = None, auth: tuple[str, str] | None = BI
    ) -> tuple[int, dict[str, str], bytes]:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        request = urllib.request.Request(url)  # noqa: S310 - loopback
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    def api(self, name: str, **params: str) -> tuple[int, dict[str, Any]]:
        status, _, body = self.get(f"/ui/api/{name}", params)
        return status, json.loads(body)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture(scope="module")
def server(chdb_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    database = f"ui_{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        {},
        data_dir=str(tmp_path_factory.mktemp("ui")),
        clickhouse={
            "dsn": f"chdb://{chdb_dir}",
            "database": database,
            "password": "w-secret",
            "bi_password": BI[1],
            "serve_port": 0,
        },
    )
    client = connect(settings)
    migrate(client, database)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=now.minute % 5) - timedelta(minutes=55)
    rows = []
    for hours_back, (promoters, detractors, responses) in enumerate([(5, 2, 9), (1, 3, 4)]):
        window_start = start - timedelta(hours=hours_back)
        for channel, touchpoint in (("web", "delivery"), ("mobile_app", "delivery")):
            rows.append(
                [
                    "nps",
                    channel,
                    touchpoint,
                    window_start,
                    window_start + timedelta(hours=1),
                    3600,
                    float(promoters - detractors),
                    float(responses),
                    100.0 * (promoters - detractors) / responses,
                    {"promoters": promoters, "detractors": detractors, "responses": responses},
                    1,
                    now,
                ]
            )
    client.insert(
        f"{database}.kpi_touchpoint",
        rows,
        column_names=[
            "kpi",
            "channel",
            "touchpoint",
            "window_start",
            "window_end",
            "window_size",
            "numerator",
            "denominator",
            "value",
            "counts",
            "version",
            "updated_at",
        ],
    )
    client.close()
    loop = asyncio.new_event_loop()
    engine = EngineHTTP(settings, lambda: connect(settings))
    port = loop.run_until_complete(engine.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield Server(settings, port, engine, loop)
    asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_page_and_files(server: Server) -> None:
    status, headers, _ = server.get("/ui", {"window": "1h"})
    assert status == 302 and headers["Location"] == "/ui/?window=1h"
    status, headers, body = server.get("/ui/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<table id="kpi-grid">' in body
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = server.get("/ui/static/vendor/uPlot.iife.min.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b"uPlot" in body
    for missing in ("/ui/static/../api.py", "/ui/static/nope.js", "/ui/static/index.html"):
        assert server.get(missing)[0] == 404, missing


def test_passwords_set_means_the_page_asks_for_them(server: Server) -> None:
    status, headers, _ = server.get("/ui/", auth=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert server.get("/ui/api/channels", auth=("touchstream_bi", "wrong"))[0] == 401
    assert server.get("/ui/api/channels", auth=("nobody", ""))[0] == 401
    assert server.get("/ui/", auth=("default", "w-secret"))[0] == 200


def test_grid_is_the_named_query_with_the_params_it_reports(server: Server) -> None:
    status, doc = server.api("kpi_grid", window="1d")
    assert status == 200, doc
    assert doc["query"] == "kpi_grid" and doc["columns"][:5] == [
        "kpi",
        "touchpoint",
        "numerator",
        "denominator",
        "value",
    ]
    cells = {(r["kpi"], r["touchpoint"]): r for r in doc["rows"]}
    # Two hourly windows x two channels: (5-2)*2 + (1-3)*2 over (9+4)*2 responses.
    assert (cells[("nps", "delivery")]["numerator"], cells[("nps", "delivery")]["denominator"]) == (
        2,
        26,
    )
    assert cells[("nps", "all")]["value"] == pytest.approx(round(100 * 2 / 26, 4))
    assert cells[("nps", "all")]["since"].endswith("Z")
    client = connect(server.settings)
    try:
        direct = named.run(
            client, named.get("kpi_grid"), server.settings.clickhouse.database, doc["params"]
        )
    finally:
        client.close()
    assert [list(r.values())[:5] for r in doc["rows"]] == [list(r[:5]) for r in direct.result_rows]
    status, hour = server.api("kpi_grid", window="1h", channel="web")
    assert status == 200
    web = {(r["kpi"], r["touchpoint"]): r for r in hour["rows"]}
    assert (web[("nps", "delivery")]["numerator"], web[("nps", "delivery")]["denominator"]) == (
        3,
        9,
    )
    assert hour["params"]["span_s"] == "3600" and hour["params"]["channel"] == "web"


def test_series_and_other_panels(server: Server) -> None:
    status, doc = server.api("kpi_by_touchpoint", window="1d", kpi="nps", channel="mobile_app")
    assert status == 200, doc
    assert [(r["touchpoint"], r["numerator"], r["denominator"]) for r in doc["rows"]] == [
        ("delivery", -2, 4),
        ("delivery", 3, 9),
    ]
    assert doc["params"]["window_size"] == "3600"
    status, month = server.api("kpi_by_touchpoint", window="30d", kpi="nps")
    # 30 days are drawn from daily windows, and this database holds only hourly ones.
    assert status == 200 and month["params"]["window_size"] == "86400" and month["rows"] == []
    assert [r["channel"] for r in server.api("channels")[1]["rows"]] == ["mobile_app", "web"]
    for name in ("checkout_funnel", "abandonment_paths", "open_detractor_alerts", "time_to_close"):
        status, doc = server.api(name)
        assert status == 200 and doc["rows"] == [], (name, doc)
    status, health = server.api("pipeline_health")
    assert status == 200 and health["rows"][0]["events_last_hour"] == 0
    assert health["live"] is None  # no pipeline in this process
    assert health["sla_s"] == server.settings.streams.alert_sla_s


@pytest.mark.parametrize(
    ("name", "params", "status", "message"),
    [
        ("kpi_grid", {"window": "2h"}, 400, "window must be one of"),
        ("kpi_grid", {"channel": "web' OR 1=1 --"}, 400, "channel must be"),
        ("kpi_grid", {"query": "SELECT 1"}, 400, "unknown parameter(s) query"),
        ("kpi_grid", {"until": "2000-01-01 00:00:00"}, 400, "unknown parameter(s) until"),
        ("kpi_by_touchpoint", {"kpi": "nps' --"}, 400, "kpi must be one of"),
        ("checkout_funnel", {"channel": "web"}, 400, "unknown parameter(s) channel"),
        ("open_detractor_alerts", {"sla_s": "1"}, 400, "unknown parameter(s) sla_s"),
        ("cohorts_by_first_channel", {}, 404, "no endpoint"),
        ("DROP TABLE events", {}, 404, "no endpoint"),
    ],
)
def test_browser_parameters_are_whitelisted(
    server: Server, name: str, params: dict[str, str], status: int, message: str
) -> None:
    got, doc = server.api(urllib.parse.quote(name), **params)
    assert got == status and message in doc["error"], doc


def test_page_queries_run_read_only(server: Server) -> None:
    """The path every API query takes refuses writes: it is the BI user's."""
    database = server.settings.clickhouse.database
    write = f"INSERT INTO {database}.kpi_touchpoint (kpi) VALUES ('x')"  # noqa: S608
    future = asyncio.run_coroutine_threadsafe(server.engine.query_readonly(write, {}), server.loop)
    with pytest.raises(Exception, match="READONLY|readonly"):
        future.result(30)
    count = asyncio.run_coroutine_threadsafe(
        server.engine.query_readonly(
            "SELECT count() AS n FROM {db:Identifier}.kpi_touchpoint", {"db": database}
        ),
        server.loop,
    ).result(30)
    assert json.loads(count)["data"] == [{"n": 4}]
