from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from touchstream.localbroker import BrokerStartError, LocalBroker, kafka_api_versions_ok


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_starts_ready_on_a_free_port_and_stops(tmp_path: Path) -> None:
    broker = LocalBroker(log_path=tmp_path / "broker.log")
    bootstrap = broker.start()
    pid = broker.pid
    assert pid is not None
    host, port = bootstrap.split(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert kafka_api_versions_ok(host, int(port))
    broker.stop()
    assert not broker.running()
    assert not _alive(pid)
    assert not kafka_api_versions_ok(host, int(port), timeout=0.3)


def test_two_brokers_get_different_ports() -> None:
    with LocalBroker() as first, LocalBroker() as second:
        assert first.bootstrap_servers != second.bootstrap_servers


def test_a_binary_that_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'no such listener' >&2\nexit 3\n")
    fake.chmod(0o755)
    broker = LocalBroker(binary=str(fake), log_path=tmp_path / "log", startup_timeout_s=5)
    with pytest.raises(BrokerStartError, match="exited with code 3"):
        broker.start()
    assert "no such listener" in (tmp_path / "log").read_text()


def test_a_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    broker = LocalBroker(binary=str(tmp_path / "absent"))
    with pytest.raises(BrokerStartError, match="cannot execute"):
        broker.start()


def test_a_port_in_use_is_a_clear_error() -> None:
    with LocalBroker() as first:
        port = int(first.bootstrap_servers.split(":")[1])
        second = LocalBroker(port=port, startup_timeout_s=5)
        with pytest.raises(BrokerStartError):
            second.start()
        assert not second.running()


def test_the_broker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from touchstream.localbroker import LocalBroker
        broker = LocalBroker()
        broker.start()
        print(broker.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    broker_pid = int(parent.stdout.readline())
    assert _alive(broker_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait(5)
    parent.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(broker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(broker_pid), "the broker outlived its killed parent"
