"""A ClickHouse client from settings: the embedded engine (chDB) or a server over HTTP(S)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect

from touchstream.settings import Settings


class ClickHouseUnavailable(RuntimeError):
    """ClickHouse could not be reached or opened; the message says which and why."""


def connect(settings: Settings, database: str | None = None, **client_settings: Any) -> Any:
    """Open a clickhouse-connect client. ``database=None`` uses the configured one."""
    dsn = settings.clickhouse_dsn
    ch = settings.clickhouse
    try:
        if dsn.startswith("chdb://"):
            path = dsn[len("chdb://") :]
            # The engine directory must exist before chDB opens it.

            Path(path).mkdir(parents=True, exist_ok=True)
            return clickhouse_connect.get_client(dsn=dsn, settings=client_settings or None)
        parts = urlsplit(dsn)
        return clickhouse_connect.get_client(
            host=parts.hostname or "localhost",
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            username=parts.username or ch.username,
            password=parts.password or ch.password.get_secret_value(),
            database=database or "default",
            secure=parts.scheme == "https",
            verify=ch.verify_tls,
            ca_cert=str(ch.ca_cert) if ch.ca_cert else None,
            settings=client_settings or None,
        )
    except Exception as exc:  # clickhouse-connect raises several unrelated types here
        raise ClickHouseUnavailable(f"cannot open ClickHouse at {_redacted(dsn)}: {exc}") from exc


def _redacted(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        return dsn.replace(f":{parts.password}@", ":***@")
    return dsn
