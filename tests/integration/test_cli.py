"""The CLI as a user runs it: `demo` to the end, `up` stopped with Ctrl-C, `query`, `doctor`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.integration.test_lifecycle import alive

TOUCHSTREAM = [sys.executable, "-m", "touchstream.cli"]


def env_for(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHSTREAM_")}
    env.update(
        {
            "TOUCHSTREAM_DATA_DIR": str(data_dir),
            "TOUCHSTREAM_METRICS__PORT": "0",
            "TOUCHSTREAM_METRICS__WORKER_PORT": "0",
            "TOUCHSTREAM_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "TOUCHSTREAM_CLICKHOUSE__SERVE_PORT": "0",
            "COLUMNS": "200",
            **extra,
        }
    )
    return env


def run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        TOUCHSTREAM + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_demo_ends_with_kpis_and_events_in_the_data_dir(tmp_path: Path) -> None:
    env = env_for(tmp_path / "data")
    demo = run(["demo", "--customers", "60", "--hours", "2", "--seed", "3"], env, timeout=240)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "CX KPIs per touchpoint" in demo.stdout
    assert "NPS" in demo.stdout and "dead letters: not_json 1" in demo.stdout
    reconciled = re.search(r"done: (\d+) events reconciled", demo.stdout)
    assert reconciled, demo.stdout
    assert re.search(r"CX page: http://127\.0\.0\.1:\d+/ui/", demo.stdout.splitlines()[-1])
    assert (tmp_path / "data" / "clickhouse").is_dir()
    assert not (tmp_path / "data" / "run" / "stack.json").exists()

    # The data stays: the engine is opened directly now that no stack runs.
    query = run(
        [
            "query",
            "SELECT count() AS n, uniqExact(event_id) AS ids FROM touchstream.events",
            "--format",
            "json",
        ],
        env,
    )
    assert query.returncode == 0, query.stderr
    row = json.loads(query.stdout.strip().splitlines()[-1])
    assert int(row["n"]) == int(row["ids"]) == int(reconciled.group(1))

    kpis = run(
        [
            "query",
            "SELECT count() FROM touchstream.kpi_touchpoint FINAL WHERE kpi = 'nps'",
            "--format",
            "csv",
        ],
        env,
    )
    assert kpis.returncode == 0 and int(kpis.stdout.strip().splitlines()[-1]) > 0

    refused = run(["query", "DROP TABLE touchstream.events"], env)
    assert refused.returncode == 1 and "query failed" in refused.stderr

    funnel = run(["query", "checkout_funnel", "--format", "json"], env)
    assert funnel.returncode == 0, funnel.stderr
    rows = [json.loads(line) for line in funnel.stdout.strip().splitlines()]
    assert rows and all(int(r["started"]) >= int(r["ordered"]) for r in rows)
    bad_param = run(["query", "checkout_funnel", "--param", "sine=2026-01-01"], env)
    assert bad_param.returncode == 2 and "unknown parameter" in bad_param.stderr

    who = "c3-000001"  # the demo's first simulated customer for seed 3
    before = run(
        [
            "query",
            f"SELECT count() FROM touchstream.journeys WHERE person = '{who}'",
            "--format",
            "csv",
        ],
        env,
    )
    assert int(before.stdout.strip().splitlines()[-1]) > 0
    erased = run(["erase", "--customer", who, "--yes"], env)
    assert erased.returncode == 0, erased.stderr
    assert f"events: {before.stdout.strip().splitlines()[-1]} row(s) deleted" in erased.stdout
    assert f"row(s) of {who}" in erased.stdout
    after = run(
        [
            "query",
            f"SELECT count() FROM touchstream.journeys WHERE person = '{who}'",
            "--format",
            "csv",
        ],
        env,
    )
    assert after.stdout.strip().splitlines()[-1] == "0"


def test_up_runs_until_ctrl_c_and_leaves_nothing_behind(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = env_for(data)
    process = subprocess.Popen(
        TOUCHSTREAM + ["up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    info_path = data / "run" / "stack.json"
    try:
        deadline = time.monotonic() + 60
        while not info_path.exists():
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "stack did not come up"
            time.sleep(0.2)
        info = json.loads(info_path.read_text())
        # While it runs it owns the embedded engine; other commands go through its
        # ClickHouse HTTP interface (migrate as the writer, query as the BI user).
        assert info["http_port"] > 0
        migrated = run(["migrate"], env)
        assert migrated.returncode == 0 and "schema is up to date" in migrated.stdout
        counted = run(["query", "SELECT count() FROM touchstream.events", "--format", "csv"], env)
        assert counted.returncode == 0, counted.stderr
        assert counted.stdout.strip().splitlines()[-1] == "0"
        refused = run(["query", "DROP TABLE touchstream.events"], env)
        assert refused.returncode == 1 and "164" in refused.stderr
        served = run(["serve"], env)
        assert served.returncode == 1 and "owned by a running stack" in served.stderr
        page = f"http://127.0.0.1:{info['http_port']}/ui/"
        with urllib.request.urlopen(page, timeout=30) as response:  # noqa: S310 - loopback
            assert response.status == 200 and b'id="kpi-grid"' in response.read()
        with urllib.request.urlopen(page + "api/pipeline_health", timeout=30) as response:  # noqa: S310
            assert json.loads(response.read())["live"]["worker_running"] is True
        doctor = run(["doctor"], env)
        assert doctor.returncode == 0, doctor.stdout
        assert "answers" in doctor.stdout
        children = [
            int(pid)
            for task in Path(f"/proc/{process.pid}/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]
        assert len(children) == 2  # broker and worker
        time.sleep(2)  # let the worker join its group
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, output
    assert "stopped; data kept" in output
    assert f"CX page http://127.0.0.1:{info['http_port']}/ui/" in output
    assert not info_path.exists()
    for pid in children:
        assert not alive(pid), f"child {pid} outlived `up`"
    assert (data / "clickhouse").is_dir() and info["bootstrap_servers"].startswith("127.0.0.1:")
