"""Shared fixtures: the real local broker and the embedded ClickHouse, started once
per session; a unique topic prefix and database per test.

chDB allows one engine path per process, so every test in this process shares one
engine directory and isolates itself by database name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from touchstream.localbroker import LocalBroker
from touchstream.settings import Settings, load_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true a skipped test is a missing component: fail the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if IN_CI and skipped and exitstatus == 0 and reporter is not None:
        reporter.write_line(f"CI=true: {skipped} test(s) skipped; a skip is a failure here")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with LocalBroker(log_path=log) as running:
        yield running


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clickhouse")


@pytest.fixture(scope="session")
def ch(chdb_dir: Path) -> Iterator[Any]:
    import clickhouse_connect

    client = clickhouse_connect.get_client(dsn=f"chdb://{chdb_dir}")
    yield client


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, chdb_dir: Path) -> SettingsFactory:
    """Settings for one test: its own data dir, topic prefix and database."""
    unique = uuid.uuid4().hex[:10]

    def build(bootstrap: str | None = None, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "kafka": {"topic_prefix": f"t{unique}.", "session_timeout_ms": 6000},
            "clickhouse": {"dsn": f"chdb://{chdb_dir}", "database": f"t_{unique}", "serve_port": 0},
            "metrics": {"port": 0, "worker_port": 0},
            # One worker process (CPU on CI's 2 cores, and the tests' timing);
            # tests/integration/test_worker_processes.py runs several.
            "streams": {"app_id": f"ts-{unique}", "processes": 1},
            "sink": {"group_id": f"sink-{unique}", "flush_interval_s": 0.3},
        }
        if bootstrap:
            base["kafka"]["bootstrap_servers"] = bootstrap
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return load_settings({}, **base)

    return build
