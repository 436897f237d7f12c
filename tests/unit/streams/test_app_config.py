from __future__ import annotations

import gc
from pathlib import Path

import faust
import pytest

from touchstream.settings import load_settings
from touchstream.streams.app import create_app
from touchstream.streams.worker import run_worker


@pytest.fixture(autouse=True)
def _gc_restored() -> object:
    # run_worker freezes the GC and raises its threshold for the worker process.
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_fausts_data_directory_is_under_the_data_dir_not_the_working_directory(
    tmp_path: Path,
) -> None:
    # Faust's default is "<app id>-data" relative to the working directory: every
    # worker started from a checkout left one there.
    settings = load_settings(
        {
            "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "TOUCHSTREAM_DATA_DIR": str(tmp_path / "data"),
            "TOUCHSTREAM_STREAMS__APP_ID": "cx",
        }
    )
    app = create_app(settings)
    assert Path(app.conf.tabledir).is_relative_to(tmp_path / "data")
    assert Path(app.conf.datadir).name == "cx-data"


def test_the_worker_creates_the_parents_of_fausts_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Faust makes its data directory without parents: a fresh data dir failed.
    settings = load_settings(
        {
            "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "TOUCHSTREAM_DATA_DIR": str(tmp_path / "fresh"),
            "TOUCHSTREAM_METRICS__ENABLED": "false",
        }
    )
    started: list[Path] = []

    def execute(self: faust.Worker) -> None:
        datadir = Path(self.app.conf.datadir)
        datadir.mkdir()  # what Faust does first
        started.append(datadir)

    monkeypatch.setattr(faust.Worker, "execute_from_commandline", execute)
    run_worker(settings)
    assert started and started[0].is_dir() and started[0].is_relative_to(tmp_path / "fresh")
