"""Routes of the CX page: ``GET /ui/`` (the page), ``/ui/static/<file>`` (its files,
shipped as package data) and ``/ui/api/<name>`` (JSON from one named query).

The browser never sends SQL, nor any bound parameter directly: each endpoint is a
named query from ``sinks/queries/`` plus the few browser parameters it accepts
(``window`` = 1h, 1d or 30d, ``channel``, ``kpi`` from a fixed list), validated
here and turned into the query's bound parameters together with values from the
settings (window size, step, SLA, abandonment timeout). Queries run as the BI user
(``readonly=1``) on the HTTP interface's pool, like any BI query.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from aiohttp import web

from touchstream.settings import Settings
from touchstream.sinks import named

# Runs a SELECT as the BI user with bound parameters; returns ClickHouse's JSON output.
RunReadonly = Callable[[str, Mapping[str, str]], Awaitable[bytes]]
# What the serving process knows that ClickHouse does not (the sink's lag); None: nothing.
LiveStatus = Callable[[], Awaitable[dict[str, Any]]]
# Raises for a request without the credentials the HTTP interface wants.
Authenticate = Callable[[web.Request], object]

WINDOWS = {"1h": 3600, "1d": 86_400, "30d": 30 * 86_400}
DEFAULT_WINDOW = "1d"
SERIES_KPIS = frozenset({"nps", "csat", "ces", "checkout_abandonment", "cart_abandonment", "churn"})
CHANNEL = re.compile(r"^(?:all|[a-z][a-z0-9_]{0,31})$")  # PRODUCT.md's identifiers, or all
PATHS_SHOWN = 10
_DATETIME = re.compile(r"^(?:Nullable\()?DateTime")
_BIG_INT = re.compile(r"^(?:Nullable\()?U?Int(?:64|128|256)\b")
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# No inline script, nothing from elsewhere: a comment that slipped into markup could not run.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_STATIC_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


class BadRequest(ValueError):
    """A browser parameter that is unknown or not one of the allowed values."""


@dataclass(frozen=True)
class View:
    """What the browser asked for, validated."""

    window: str
    channel: str
    kpi: str
    now: datetime

    @property
    def span_s(self) -> int:
        return WINDOWS[self.window]


def parse_view(query: Mapping[str, str], accepts: frozenset[str], now: datetime) -> View:
    unknown = sorted(set(query) - accepts)
    if unknown:
        raise BadRequest(
            f"unknown parameter(s) {', '.join(unknown)}; this endpoint takes "
            + (", ".join(sorted(accepts)) or "none")
        )
    window = query.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        raise BadRequest(f"window must be one of {', '.join(WINDOWS)}")
    channel = query.get("channel", "all")
    if not CHANNEL.match(channel):
        raise BadRequest("channel must be 'all' or a channel name ([a-z][a-z0-9_]*, 32 chars)")
    kpi = query.get("kpi", "nps")
    if kpi not in SERIES_KPIS:
        raise BadRequest(f"kpi must be one of {', '.join(sorted(SERIES_KPIS))}")
    return View(window, channel, kpi, now)


def sql_time(at: datetime) -> str:
    """A DateTime64(3, 'UTC') parameter value."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


Binder = Callable[[View, Settings], dict[str, str]]


@dataclass(frozen=True)
class Endpoint:
    """A named query and the browser parameters it accepts."""

    query: str
    accepts: frozenset[str]
    bind: Binder


def _grid(view: View, s: Settings) -> dict[str, str]:
    return {
        "span_s": str(view.span_s),
        "channel": view.channel,
        "until": sql_time(view.now),
        "window_size": str(s.streams.window_size_s),
        "step_s": str(s.streams.window_step_s),
    }


def _series(view: View, s: Settings) -> dict[str, str]:
    """Rolling windows for 1h and 1d, daily (UTC) windows for 30d when kept: the
    windows that end inside the span, the one still open included."""
    daily = view.window == "30d" and s.streams.daily_window
    size = 86_400 if daily else s.streams.window_size_s
    step = 86_400 if daily else s.streams.window_step_s
    since = view.now - timedelta(seconds=view.span_s + size)
    until = view.now + timedelta(seconds=step - size, milliseconds=1)
    return {
        "kpi": view.kpi,
        "window_size": str(size),
        "channel": view.channel,
        "since": sql_time(since),
        "until": sql_time(until),
    }


def _span(view: View, s: Settings) -> dict[str, str]:
    return {
        "since": sql_time(view.now - timedelta(seconds=view.span_s)),
        "until": sql_time(view.now),
    }


def _paths(view: View, s: Settings) -> dict[str, str]:
    return {
        **_span(view, s),
        "channel": view.channel,
        "timeout_s": str(int(s.streams.abandonment_timeout_s)),
        "limit": str(PATHS_SHOWN),
    }


def _sla(view: View, s: Settings) -> dict[str, str]:
    return {"sla_s": str(int(s.streams.alert_sla_s))}


def _health(view: View, s: Settings) -> dict[str, str]:
    return {"at": sql_time(view.now), **_sla(view, s)}


VIEW = frozenset({"window", "channel"})
ENDPOINTS: dict[str, Endpoint] = {
    "kpi_grid": Endpoint("kpi_grid", VIEW, _grid),
    "kpi_by_touchpoint": Endpoint("kpi_by_touchpoint", VIEW | {"kpi"}, _series),
    "checkout_funnel": Endpoint("checkout_funnel", frozenset({"window"}), _span),
    "abandonment_paths": Endpoint("abandonment_paths", VIEW, _paths),
    "open_detractor_alerts": Endpoint("open_detractor_alerts", frozenset(), _sla),
    "time_to_close": Endpoint("time_to_close", frozenset(), _sla),
    "pipeline_health": Endpoint("pipeline_health", frozenset(), _health),
    "channels": Endpoint("channels", frozenset(), lambda view, s: {}),
}


def rows_of(output: bytes) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of ClickHouse's JSON output, with DateTime values as ISO 8601
    UTC (``...Z``) and 64-bit integers as numbers however the engine quoted them."""
    document = json.loads(output)
    meta = document.get("meta", [])
    times = {m["name"] for m in meta if _DATETIME.match(m["type"])}
    big = {m["name"] for m in meta if _BIG_INT.match(m["type"])}
    rows = []
    for row in document.get("data", []):
        for name in times:
            if isinstance(row.get(name), str):
                row[name] = row[name].replace(" ", "T") + "Z"
        for name in big:
            if isinstance(row.get(name), str):
                row[name] = int(row[name])
        rows.append(row)
    return [m["name"] for m in meta], rows


class Page:
    """The page's routes on an aiohttp app; queries go through ``run_readonly``."""

    def __init__(
        self,
        settings: Settings,
        run_readonly: RunReadonly,
        authenticate: Authenticate,
        live: LiveStatus | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self._run = run_readonly
        self._authenticate = authenticate
        self._live = live
        self._clock = clock
        self._queries = {name: named.get(e.query) for name, e in ENDPOINTS.items()}
        self._static = _static_files()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/ui", self._redirect)
        app.router.add_get("/ui/", self._index)
        app.router.add_get("/ui/static/{path:.+}", self._file)
        app.router.add_get("/ui/api/{name}", self._api)

    def _check(self, request: web.Request) -> None:
        """Same users as the HTTP interface; a browser is asked for them (Basic auth)."""
        try:
            self._authenticate(request)
        except Exception as exc:  # the interface's own authentication error
            raise web.HTTPUnauthorized(
                text="Touchstream: log in with the BI user\n",
                headers={"WWW-Authenticate": 'Basic realm="touchstream", charset="UTF-8"'},
            ) from exc

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        query = f"?{request.query_string}" if request.query_string else ""
        raise web.HTTPFound(f"/ui/{query}")

    async def _index(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        return self._respond("index.html")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        path = request.match_info["path"]
        if path not in self._static or path == "index.html":
            raise web.HTTPNotFound()
        return self._respond(path)

    def _respond(self, path: str) -> web.Response:
        body, content_type = self._static[path]
        headers = {**_HEADERS, "Content-Security-Policy": _CSP}
        return web.Response(body=body, content_type=content_type, headers=headers)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        name = request.match_info["name"]
        endpoint = ENDPOINTS.get(name)
        if endpoint is None:
            return _json({"error": f"no endpoint {name!r}; known: {', '.join(ENDPOINTS)}"}, 404)
        now = self._clock()
        try:
            view = parse_view(request.query, endpoint.accepts, now)
        except BadRequest as exc:
            return _json({"error": str(exc)}, 400)
        query = self._queries[name]
        given = endpoint.bind(view, self.settings)
        try:
            bound = query.bind(given, self.settings.clickhouse.database)
            output = await self._run(query.sql, {k: str(v) for k, v in bound.items()})
        except Exception as exc:  # the engine's message is what the page can show
            return _json({"error": f"{name} failed: {exc}"}, 500)
        columns, rows = rows_of(output)
        document: dict[str, Any] = {
            "name": name,
            "query": query.name,
            "params": given,
            "generated_at": now.isoformat().replace("+00:00", "Z"),
            "columns": columns,
            "rows": rows,
        }
        if name == "pipeline_health":
            document["live"] = await self._live() if self._live is not None else None
            document["sla_s"] = self.settings.streams.alert_sla_s
        return _json(document, 200)


def _json(document: dict[str, Any], status: int) -> web.Response:
    return web.Response(
        text=json.dumps(document, default=str),
        status=status,
        content_type="application/json",
        headers=_HEADERS,
    )


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file under ``static/`` (package data), read once: path → (bytes, type)."""
    found: dict[str, tuple[bytes, str]] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
                continue
            suffix = entry.name[entry.name.rfind(".") :]
            if suffix in _STATIC_TYPES:
                found[prefix + entry.name] = (entry.read_bytes(), _STATIC_TYPES[suffix])

    walk(resources.files("touchstream.ui") / "static", "")
    if "index.html" not in found:
        raise RuntimeError("the CX page's files are missing from the installed package")
    return found
