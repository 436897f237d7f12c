"""Fixtures of the reliability suite: a noisy simulated stream and its expectations.

The session fixtures of tests/conftest.py (the local broker, the embedded
ClickHouse, per-test settings) are shared; these add the simulation every fault
scenario reconciles against (tests/reconcile.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.reconcile import Expected, expect, settled
from touchstream.producers.simulator import Message, Simulator
from touchstream.settings import Settings

Simulated = Callable[..., tuple[list[Message], Expected]]


@pytest.fixture
def simulate() -> Simulated:
    """Messages of a settled simulation (every checkout and cart decided) and what
    must land for them under ``settings``."""

    def build(settings: Settings, **options: Any) -> tuple[list[Message], Expected]:
        config = settled(
            settings,
            customers=60,
            duration_s=3 * 3600,
            start=datetime(2026, 11, 3, 21, tzinfo=UTC),  # across a UTC day boundary
            seed=17,
        )
        config = replace(config, **options)
        messages = Simulator(config).messages()
        return messages, expect(messages, settings.streams)

    return build
