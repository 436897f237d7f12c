"""ClickHouse's HTTP interface, served by the process that owns the embedded engine.

chDB cannot open ClickHouse's own listeners, so `touchstream up` (or `serve`)
speaks the protocol for it: GET/POST, ``query`` in the URL and/or the body,
``FORMAT`` and ``default_format``, ``database``, settings and ``param_*`` as URL
parameters, ``/ping``, response compression (gzip, deflate, zstd) when the client
asks with ``enable_http_compression=1``, request bodies compressed with gzip,
deflate, zstd or lz4, ``X-ClickHouse-Format`` / ``-Summary`` /
``-Exception-Code`` headers, and ClickHouse's own mapping of error codes to HTTP
statuses. Two users from settings: the writer (``clickhouse.username``) and the
BI user (``clickhouse.bi_user``), whose every query runs with ``readonly=1``.

Queries run on a bounded pool of threads, each with its own engine connection,
with ``max_execution_time`` and ``max_result_bytes`` from settings, so a slow
BI query neither blocks the sink's inserts nor the event loop.

The same app serves the live CX page under ``/ui`` (``touchstream.ui.api``): its
named queries run here as the BI user, on the same pool and limits.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hmac
import ipaddress
import json
import re
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import lz4.frame
from aiohttp import web

from touchstream.settings import Settings
from touchstream.ui.api import LiveStatus, Page

try:  # Python 3.14 has compression.zstd; before that, the backport (a dependency)
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd

# ClickHouse error codes used here, and ClickHouse's code → HTTP status mapping
# (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp; numbers from errorCodeToName()).
AUTHENTICATION_FAILED = 516
BAD_ARGUMENTS = 36
STD_EXCEPTION = 1001
_STATUS = {
    194: 401,  # REQUIRED_PASSWORD
    # UNKNOWN_USER, WRONG_PASSWORD, AUTHENTICATION_FAILED, SET_NON_GRANTED_ROLE, ACCESS_DENIED
    **dict.fromkeys((192, 193, 516, 512, 497), 403),
    # BAD_ARGUMENTS, CANNOT_COMPILE_REGEXP, CANNOT_PARSE_*, DUPLICATE_COLUMN, ILLEGAL_COLUMN,
    # UNKNOWN_ELEMENT_IN_AST, UNKNOWN_TYPE_OF_AST_NODE, THERE_IS_NO_COLUMN, TOO_DEEP_AST,
    # TOO_BIG_AST, UNEXPECTED_AST_STRUCTURE, SYNTAX_ERROR, INCORRECT_DATA, TYPE_MISMATCH,
    # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    **dict.fromkeys(
        (36, 427, 6, 25, 26, 38, 41, 72, 441, 675, 676, 27, 376, 15, 44, 37, 123, 8, 167, 168)
        + (223, 62, 117, 53, 321),
        400,
    ),
    # UNKNOWN_TABLE, _FUNCTION, _IDENTIFIER, _TYPE, _STORAGE, _DATABASE, _SETTING,
    # _DIRECTION_OF_SORTING, _AGGREGATE_FUNCTION, _FORMAT, _DATABASE_ENGINE, _TYPE_OF_QUERY, _ROLE
    **dict.fromkeys((60, 46, 47, 50, 56, 81, 115, 152, 63, 73, 336, 78, 511), 404),
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    **dict.fromkeys((209, 76, 439), 503),  # SOCKET_TIMEOUT, CANNOT_OPEN_FILE, ..._SCHEDULE_TASK
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
    779: 415,  # UNSUPPORTED_MEDIA_TYPE
}
# URL parameters of the HTTP protocol itself, not ClickHouse settings.
_PROTOCOL_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "quota_key",
        "role",
        "stacktrace",
    }
)
_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8",
    "CSVWithNames": "text/csv; charset=UTF-8",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}
_TRAILING_FORMAT = re.compile(
    r"\bFORMAT\s+(?P<fmt>[A-Za-z][A-Za-z0-9_]*)\s*(?P<settings>SETTINGS\s+.*)?;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+(?:TABLE\s+)?(?P<table>[`\"\w.]+)\s*(?:\((?P<cols>[^)]*)\))?\s*"
    r"(?:SETTINGS\s+(?P<settings>.*?)\s+)?FORMAT\s+(?P<fmt>\w+)[ \t]*(?:\r?\n|$)",
    re.IGNORECASE | re.DOTALL,
)
_CODE = re.compile(r"Code:\s*(\d+)")


class ClickHouseError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _status(code: int) -> int:
    return _STATUS.get(code, 500)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass(frozen=True)
class User:
    name: str
    readonly: bool


class EngineHTTP:
    """The HTTP endpoint. ``client_factory`` opens one engine connection per thread;
    ``live`` tells the CX page what the serving process knows (the sink's lag)."""

    def __init__(
        self,
        settings: Settings,
        client_factory: Callable[[], Any],
        live: LiveStatus | None = None,
    ) -> None:
        ch = settings.clickhouse
        self.settings = settings
        self.host = ch.serve_host
        self.port = ch.serve_port
        if not is_loopback(self.host) and not (
            ch.password.get_secret_value() and ch.bi_password.get_secret_value()
        ):
            raise ValueError(
                f"serving ClickHouse on {self.host} (not loopback) needs passwords: set "
                "TOUCHSTREAM_CLICKHOUSE__PASSWORD and TOUCHSTREAM_CLICKHOUSE__BI_PASSWORD"
            )
        self._users = {
            ch.username: (ch.password.get_secret_value(), User(ch.username, readonly=False)),
            ch.bi_user: (ch.bi_password.get_secret_value(), User(ch.bi_user, readonly=True)),
        }
        self._bi = self._users[ch.bi_user][1]
        self._live = live
        self._factory = client_factory
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(ch.serve_threads, thread_name_prefix="touchstream-ch")
        self._runner: web.AppRunner | None = None
        self.queries = 0

    # --- lifecycle ---------------------------------------------------------
    async def start(self) -> int:
        app = web.Application(
            client_max_size=self.settings.clickhouse.serve_max_body_bytes,
            # Request bodies are decompressed here, for every encoding ClickHouse takes.
            handler_args={"auto_decompress": False},
        )
        app.router.add_route("*", "/ping", self._ping)
        app.router.add_route("*", "/", self._handle)
        Page(self.settings, self.query_readonly, self._authenticate, self._live).add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the real one when 0 was asked
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def _client(self, user: User) -> Any:
        """This thread's connection for the user's kind. Limits are connection
        settings; a BI connection is made read-only last (readonly=1 forbids any
        later SET), for good: a pooled connection never changes kind."""
        clients: dict[bool, Any] = self._local.__dict__.setdefault("clients", {})
        client = clients.get(user.readonly)
        if client is None:
            ch = self.settings.clickhouse
            client = self._factory()
            with self._clients_lock:
                self._clients.append(client)
            client.set_client_setting("max_execution_time", str(ch.serve_timeout_s))
            client.set_client_setting("max_result_bytes", str(ch.serve_max_result_bytes))
            client.set_client_setting("result_overflow_mode", "throw")
            if user.readonly:
                client.set_client_setting("readonly", "1")
            clients[user.readonly] = client
        return client

    async def query_readonly(self, sql: str, params: Mapping[str, str]) -> bytes:
        """A SELECT with bound parameters as the BI user (readonly=1), on the pool,
        in ClickHouse's JSON format: the CX page's path, with every BI limit."""
        loop = asyncio.get_running_loop()
        result, _, _ = await loop.run_in_executor(
            self._pool, self._execute, self._bi, sql, None, {}, dict(params), None, "JSON"
        )
        self.queries += 1
        return result

    # --- protocol ----------------------------------------------------------
    async def _ping(self, request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n")

    def _authenticate(self, request: web.Request) -> User:
        name = request.headers.get("X-ClickHouse-User")
        password = request.headers.get("X-ClickHouse-Key", "")
        auth = request.headers.get("Authorization", "")
        if name is None and auth.lower().startswith("basic "):
            try:
                name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                name, password = "", ""
        if name is None:
            name = request.query.get("user", "default")
            password = request.query.get("password", "")
        known = self._users.get(name)
        if known is None or not hmac.compare_digest(known[0].encode(), password.encode()):
            raise ClickHouseError(
                AUTHENTICATION_FAILED,
                f"Code: 516. DB::Exception: {name}: Authentication failed: password is "
                "incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)",
            )
        return known[1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter_ns()
        if "query" not in request.query and not request.can_read_body:
            return web.Response(text="Ok.\n")  # ClickHouse's root answer, no auth needed
        try:
            user = self._authenticate(request)
            body = _decompress(await request.read(), request.headers.get("Content-Encoding", ""))
            sql, data = _split(request.query.get("query"), body)
            if not sql.strip():
                raise ClickHouseError(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
            settings = self._settings_for(request.query)
            database = request.query.get("database")
            params = {k[6:]: v for k, v in request.query.items() if k.startswith("param_")}
            default_format = request.query.get("default_format", "TabSeparated")
            loop = asyncio.get_running_loop()
            result, fmt, summary = await loop.run_in_executor(
                self._pool,
                self._execute,
                user,
                sql,
                data,
                settings,
                params,
                database,
                default_format,
            )
        except ClickHouseError as exc:
            return _error(exc.code, str(exc))
        except Exception as exc:  # the engine's own exceptions carry "Code: N"
            return _engine_error(exc)
        self.queries += 1
        summary["elapsed_ns"] = time.perf_counter_ns() - started
        summary["result_bytes"] = len(result)
        headers = {
            "X-ClickHouse-Format": fmt,
            "X-ClickHouse-Summary": json.dumps({k: str(v) for k, v in summary.items()}),
            "X-ClickHouse-Server-Display-Name": "touchstream-embedded",
            "Content-Type": _CONTENT_TYPES.get(fmt, "application/octet-stream"),
        }
        if request.query.get("enable_http_compression") in ("1", "true"):
            result, encoding = _compress(result, request.headers.get("Accept-Encoding", ""))
            if encoding:
                headers["Content-Encoding"] = encoding
        return web.Response(body=result, headers=headers)

    @staticmethod
    def _settings_for(query: Mapping[str, str]) -> dict[str, str]:
        """ClickHouse settings among the URL parameters. On a BI (readonly=1)
        connection the engine refuses any of them with READONLY, as a server does."""
        return {
            k: v
            for k, v in query.items()
            if k not in _PROTOCOL_PARAMS
            and not k.startswith("param_")
            and k != "enable_http_compression"
        }

    def _execute(
        self,
        user: User,
        sql: str,
        data: bytes | None,
        settings: dict[str, str],
        params: dict[str, str],
        database: str | None,
        default_format: str,
    ) -> tuple[bytes, str, dict[str, Any]]:
        client = self._client(user)
        client.database = database or None
        insert = _INSERT.match(sql) if data is not None else None
        if insert is not None:
            columns = [
                c.strip().strip('`"') for c in (insert["cols"] or "").split(",") if c.strip()
            ]
            summary = client.raw_insert(
                insert["table"].replace("`", "").replace('"', ""),
                columns or None,
                insert_block=data,
                fmt=insert["fmt"],
                settings=settings or None,
            )
            written = getattr(summary, "written_rows", 0)
            return b"", insert["fmt"], {"written_rows": written, "read_rows": 0}
        if data:
            sql = f"{sql} {data.decode('utf-8')}"  # ClickHouse appends the body to the query
        fmt = default_format
        trailing = _TRAILING_FORMAT.search(sql)
        if trailing is not None and not sql.lstrip().upper().startswith("INSERT"):
            fmt = trailing["fmt"]
            sql = sql[: trailing.start()] + (trailing["settings"] or "")
        result = client.raw_query(
            sql, parameters=params or None, settings=settings or None, fmt=fmt
        )
        return bytes(result), fmt, {"read_rows": 0, "written_rows": 0}


def _split(query_param: str | None, body: bytes) -> tuple[str, bytes | None]:
    """(query text, insert data or None) from the URL ``query`` and the body."""
    if query_param is not None:
        return query_param, (body if body else None)
    match = _INSERT.match(body.decode("utf-8", errors="replace")) if body else None
    if match is not None:
        head = body[: len(match.group(0).encode("utf-8"))]
        return head.decode("utf-8").strip(), body[len(head) :]
    return body.decode("utf-8"), None


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity" or not body:
        return body
    try:
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        if encoding == "zstd":
            return bytes(zstd.decompress(body))
        if encoding == "lz4":
            return bytes(lz4.frame.decompress(body))
    except Exception as exc:  # any codec error means the body is unreadable
        raise ClickHouseError(
            BAD_ARGUMENTS, f"Code: 36. DB::Exception: Cannot decompress the request body: {exc}"
        ) from exc
    raise ClickHouseError(
        BAD_ARGUMENTS, f"Code: 36. DB::Exception: Unknown Content-Encoding {encoding!r}."
    )


def _compress(body: bytes, accept: str) -> tuple[bytes, str]:
    for coding in (part.split(";")[0].strip().lower() for part in accept.split(",")):
        if coding == "gzip":
            return gzip.compress(body, compresslevel=3), "gzip"
        if coding == "zstd":
            return bytes(zstd.compress(body)), "zstd"
        if coding == "deflate":
            return zlib.compress(body, 3), "deflate"
    return body, ""


def _error(code: int, message: str) -> web.Response:
    text = message if message.startswith("Code:") else f"Code: {code}. DB::Exception: {message}"
    return web.Response(
        status=_status(code),
        text=text.rstrip("\n") + "\n",
        headers={"X-ClickHouse-Exception-Code": str(code)},
    )


def _engine_error(exc: Exception) -> web.Response:
    message = str(exc)
    match = _CODE.search(message)
    code = int(match.group(1)) if match else STD_EXCEPTION
    start = message.find("Code:")
    return _error(code, message[start:] if start >= 0 else message)
