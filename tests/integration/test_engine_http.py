"""ClickHouse's HTTP interface over the embedded engine, exercised by clients we did
not write: clickhouse-connect's HTTP client, SQLAlchemy through clickhouse-connect's
dialect (Superset's path), and plain urllib for formats, errors, compression, auth."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import clickhouse_connect
import pytest
import sqlalchemy
from prometheus_client import CollectorRegistry

from tests.conftest import SettingsFactory
from tests.unit.sinks.test_clickhouse_sink import TOPICS as SINK_TOPICS
from tests.unit.sinks.test_clickhouse_sink import forwarded_records
from touchstream.chhttp import EngineHTTP
from touchstream.settings import Settings
from touchstream.sinks import metrics as sink_metrics
from touchstream.sinks.clickhouse import ClickHouseSink, default_routes
from touchstream.sinks.client import connect
from touchstream.sinks.migrate import migrate

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd

WRITER = ("default", "w-secret")
BI = ("touchstream_bi", "bi-secret")


@dataclass
class Endpoint:
    settings: Settings
    port: int
    database: str
    server: EngineHTTP

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@pytest.fixture(scope="module")
def endpoint(chdb_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    from touchstream.settings import load_settings

    database = f"h_{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        {},
        data_dir=str(tmp_path_factory.mktemp("http")),
        clickhouse={
            "dsn": f"chdb://{chdb_dir}",
            "database": database,
            "password": WRITER[1],
            "bi_password": BI[1],
            "serve_port": 0,
            "serve_threads": 4,
            "serve_timeout_s": 2,
        },
    )
    client = connect(settings)
    migrate(client, database)
    client.command(
        "CREATE TABLE {db:Identifier}.notes (id UInt32, note String) "
        "ENGINE = MergeTree ORDER BY id",
        parameters={"db": database},
    )
    client.close()
    loop = asyncio.new_event_loop()
    server = EngineHTTP(settings, lambda: connect(settings))
    port = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield Endpoint(settings, port, database, server)
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def http(
    endpoint: Endpoint,
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = BI,
    path: str = "",
) -> tuple[int, dict[str, str], bytes]:
    url = endpoint.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    request = urllib.request.Request(url, data=body, headers=headers or {})  # noqa: S310
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def cc_client(endpoint: Endpoint, user: tuple[str, str], **kw: Any) -> Any:
    return clickhouse_connect.get_client(
        host="127.0.0.1",
        port=endpoint.port,
        username=user[0],
        password=user[1],
        database=endpoint.database,
        autogenerate_session_id=False,
        **kw,
    )


# --- clickhouse-connect's HTTP client --------------------------------------------


def test_clickhouse_connect_rows_dataframe_and_inserts(endpoint: Endpoint) -> None:
    writer = cc_client(endpoint, WRITER)
    try:
        writer.insert(
            "notes", [(1, "first"), (2, "<script>x</script>")], column_names=["id", "note"]
        )
        assert writer.query("SELECT id, note FROM notes ORDER BY id").result_rows == [
            (1, "first"),
            (2, "<script>x</script>"),
        ]
        assert writer.server_version.startswith("26.")
    finally:
        writer.close()
    bi = cc_client(endpoint, BI)
    try:
        frame = bi.query_df("SELECT id, note FROM notes ORDER BY id")
        assert list(frame["id"]) == [1, 2]
        with pytest.raises(Exception, match="164|READONLY|readonly"):
            bi.insert("notes", [(3, "nope")], column_names=["id", "note"])
        with pytest.raises(Exception, match="164|READONLY|readonly"):
            bi.command("DROP TABLE notes")
        with pytest.raises(Exception, match="164|READONLY|readonly"):
            bi.command("ALTER TABLE notes DELETE WHERE 1")
        assert bi.query("SELECT count() FROM notes").result_rows == [(2,)]
    finally:
        bi.close()


def test_uncompressed_client_inserts_too(endpoint: Endpoint) -> None:
    writer = cc_client(endpoint, WRITER, compress=False)
    try:
        writer.insert("notes", [(10, "plain")], column_names=["id", "note"])
        assert writer.query("SELECT note FROM notes WHERE id = 10").result_rows == [("plain",)]
    finally:
        writer.close()


@pytest.mark.parametrize("compress", [True, False])
def test_the_sink_inserts_forwarded_events_as_they_come(endpoint: Endpoint, compress: bool) -> None:
    """The sink's raw path (JSONEachRow, lz4 as the client compresses its inserts,
    or none) through the HTTP interface, as a sink of its own process sends it (in
    a database of its own: the module's stays empty for the journey query)."""
    registry = CollectorRegistry()
    writer = cc_client(endpoint, WRITER, compress=compress)
    database = f"h_{uuid.uuid4().hex[:8]}"
    migrate(writer, database)
    sink = ClickHouseSink(
        lambda: writer, database, default_routes(SINK_TOPICS), sink_metrics.create(registry)
    )
    try:
        sink.setup()
        records = forwarded_records()
        for record in records:
            sink.add(record)
        assert sink.flush() == {("ev", 0): len(records)}
        landed = writer.query(
            "SELECT count(), countIf(identity != ''), sum(late) FROM {db:Identifier}.events",
            parameters={"db": database},
        ).result_rows
        assert landed == [(len(records), len(records), 1)]
        mapped = registry.get_sample_value(
            "touchstream_sink_raw_batches_mapped_total", {"table": "events"}
        )
        assert mapped is None  # ClickHouse took the raw batch
    finally:
        writer.command("DROP DATABASE {db:Identifier}", parameters={"db": database})
        sink.close()


# --- SQLAlchemy through clickhouse-connect's dialect (Superset's path) -------------


def test_sqlalchemy_lists_tables_and_runs_a_journey_query(endpoint: Endpoint) -> None:
    url = (
        f"clickhousedb://{BI[0]}:{BI[1]}@127.0.0.1:{endpoint.port}/{endpoint.database}"
        "?autogenerate_session_id=false"
    )
    engine = sqlalchemy.create_engine(url)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
        assert {"events", "kpi_touchpoint", "dead_letters"} <= tables
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT channel, count() AS n FROM events FINAL "
                    "WHERE occurred_at >= :since GROUP BY channel ORDER BY channel"
                ),
                {"since": "2020-01-01 00:00:00"},
            ).all()
        assert rows == []  # the journey table is empty here; the query ran as BI
    finally:
        engine.dispose()


# --- plain HTTP --------------------------------------------------------------------


def test_ping_and_select_one(endpoint: Endpoint) -> None:
    assert http(endpoint, path="ping", auth=None)[2] == b"Ok.\n"
    assert http(endpoint, auth=None, headers={})[2] == b"Ok.\n"
    status, headers, body = http(endpoint, {"query": "SELECT 1"})
    assert (status, body) == (200, b"1\n")
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert "elapsed_ns" in json.loads(headers["X-ClickHouse-Summary"])


def test_formats_from_the_clause_and_from_default_format(endpoint: Endpoint) -> None:
    status, headers, body = http(endpoint, {"query": "SELECT 1 AS a, 'x' AS b FORMAT JSONEachRow"})
    assert status == 200 and json.loads(body) == {"a": 1, "b": "x"}
    assert headers["X-ClickHouse-Format"] == "JSONEachRow"
    status, headers, body = http(
        endpoint, {"query": "SELECT 2 AS a", "default_format": "CSVWithNames"}
    )
    assert body == b'"a"\n2\n' and headers["X-ClickHouse-Format"] == "CSVWithNames"


def test_query_in_the_body_and_in_url_plus_body(endpoint: Endpoint) -> None:
    assert http(endpoint, body=b"SELECT 3")[2] == b"3\n"
    assert http(endpoint, {"query": "SELECT"}, body=b"4")[2] == b"4\n"


def test_database_settings_and_parameters_from_the_url(endpoint: Endpoint) -> None:
    status, _, body = http(
        endpoint, {"query": "SELECT count() FROM dead_letters", "database": endpoint.database}
    )
    assert (status, body) == (200, b"0\n")
    status, _, body = http(endpoint, {"query": "SELECT {n:UInt8} * 2", "param_n": "21"})
    assert body == b"42\n"
    limited = {"max_result_rows": "2", "result_overflow_mode": "throw"}
    status, headers, body = http(
        endpoint, {"query": "SELECT number FROM numbers(10)", **limited}, auth=WRITER
    )
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "396"
    # The BI user is readonly=1: like a server, the engine refuses any setting from it.
    status, headers, body = http(endpoint, {"query": "SELECT 1", **limited})
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "164"


def test_errors_carry_the_engine_code_and_clickhouse_status(endpoint: Endpoint) -> None:
    status, headers, body = http(endpoint, {"query": "SELEC 1"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    assert body.startswith(b"Code: 62. DB::Exception: Syntax error")
    status, headers, _ = http(endpoint, {"query": "SELECT * FROM nowhere.nothing"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "81")
    status, headers, _ = http(
        endpoint, {"query": "DROP TABLE events", "database": endpoint.database}
    )
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "164")


def test_compressed_responses_when_asked(endpoint: Endpoint) -> None:
    query = {"query": "SELECT number FROM numbers(1000)", "enable_http_compression": "1"}
    _, headers, body = http(endpoint, query, headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).splitlines()[-1] == b"999"
    _, headers, body = http(endpoint, query, headers={"Accept-Encoding": "zstd, gzip"})
    assert headers["Content-Encoding"] == "zstd"
    assert bytes(zstd.decompress(body)).splitlines()[-1] == b"999"
    _, headers, body = http(endpoint, {"query": "SELECT 1"}, headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in headers and body == b"1\n"  # not asked with the setting


def test_auth_by_headers_basic_and_url_and_wrong_passwords(endpoint: Endpoint) -> None:
    by_headers = {"X-ClickHouse-User": BI[0], "X-ClickHouse-Key": BI[1]}
    assert http(endpoint, {"query": "SELECT 5"}, headers=by_headers, auth=None)[2] == b"5\n"
    url_auth = {"query": "SELECT 6", "user": BI[0], "password": BI[1]}
    assert http(endpoint, url_auth, auth=None)[2] == b"6\n"
    for auth in [(BI[0], "wrong"), ("nobody", ""), ("default", "")]:
        status, headers, body = http(endpoint, {"query": "SELECT 1"}, auth=auth)
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516"), auth
        assert b"AUTHENTICATION_FAILED" in body


def test_insert_with_a_body_is_for_the_writer_only(endpoint: Endpoint) -> None:
    insert = f"INSERT INTO {endpoint.database}.notes (id, note) FORMAT CSV"
    status, _, _ = http(endpoint, {"query": insert}, body=b"20,csv one\n21,csv two\n", auth=WRITER)
    assert status == 200
    status, _, _ = http(endpoint, body=f"{insert}\n22,in body\n".encode(), auth=WRITER)
    assert status == 200
    compressed = gzip.compress(b"23,gzipped\n")
    status, _, _ = http(
        endpoint,
        {"query": insert},
        body=compressed,
        auth=WRITER,
        headers={"Content-Encoding": "gzip"},
    )
    assert status == 200
    status, headers, _ = http(endpoint, {"query": insert}, body=b"24,bi\n", auth=BI)
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "164")
    _, _, body = http(
        endpoint,
        {
            "query": f"SELECT groupArray(id) FROM (SELECT id FROM {endpoint.database}.notes "
            "WHERE id >= 20 ORDER BY id)"
        },
    )
    assert body == b"[20,21,22,23]\n"


def test_a_slow_query_does_not_stall_others(endpoint: Endpoint) -> None:
    slow = {
        "query": "SELECT sleepEachRow(0.5) FROM numbers(6)",
        "max_block_size": "1",
        "max_execution_time": "10",
    }
    with ThreadPoolExecutor(2) as pool:
        slow_call = pool.submit(http, endpoint, slow, None, None, WRITER)
        time.sleep(0.3)
        started = time.monotonic()
        assert http(endpoint, {"query": "SELECT 7"})[2] == b"7\n"
        insert = f"INSERT INTO {endpoint.database}.notes (id, note) FORMAT CSV"
        assert http(endpoint, {"query": insert}, body=b"30,meanwhile\n", auth=WRITER)[0] == 200
        assert time.monotonic() - started < 1.0
        assert slow_call.result()[0] == 200


def test_the_query_timeout_from_settings_applies(endpoint: Endpoint) -> None:
    # serve_timeout_s = 2 here; one 3 s block of the BI user's query overruns it.
    status, headers, _ = http(endpoint, {"query": "SELECT sleepEachRow(1) FROM numbers(3)"})
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (408, "159")


def test_binding_beyond_loopback_needs_passwords(make_settings: SettingsFactory) -> None:
    settings = make_settings(clickhouse={"serve_host": "0.0.0.0"})  # noqa: S104
    with pytest.raises(ValueError, match="needs passwords"):
        EngineHTTP(settings, lambda: None)
