"""The emitter pseudonymises PII before serialising; without a key it refuses.
`serialize` builds the message and sends nothing, so no broker is needed here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.samples import wire
from touchstream.producers.emitter import Emitter, UnprotectedPii
from touchstream.schemas.events import EVENT_ADAPTER
from touchstream.schemas.pii import Pseudonymiser
from touchstream.settings import Settings, load_settings


def settings(tmp_path: Path, key: str | None) -> Settings:
    env = {"TOUCHSTREAM_DATA_DIR": str(tmp_path), "TOUCHSTREAM_KAFKA__BOOTSTRAP_SERVERS": "x:1"}
    if key is not None:
        env["TOUCHSTREAM_PII_KEY"] = key
    return load_settings(env)


def event_with_pii() -> dict[str, object]:
    event = wire("support_contact")
    event["properties"] = {"reason": "late", "resolved": False, "phone": "+34 600 11 22 33"}
    return event


def test_the_clear_value_is_never_serialised(tmp_path: Path) -> None:
    key = "a-shared-secret-of-the-services"
    emitter = Emitter(settings(tmp_path, key))
    for source in (event_with_pii(), EVENT_ADAPTER.validate_python(event_with_pii())):
        _, _, value, parsed = emitter.serialize(source)
        # The number's digits, not a short run of them a random event_id may hold.
        assert b"600 11 22 33" not in value and b"600112233" not in value
        token = Pseudonymiser(key.encode()).token("phone", "+34600112233")
        assert parsed.wire()["properties"]["phone"] == token
        assert token.encode() in value


def test_no_key_no_send(tmp_path: Path) -> None:
    emitter = Emitter(settings(tmp_path, None))
    with pytest.raises(UnprotectedPii, match="TOUCHSTREAM_PII_KEY"):
        emitter.serialize(event_with_pii())
    emitter.serialize(wire("page_view"))  # no PII: no key needed


def test_the_local_stack_key_file_is_used_when_no_key_is_set(tmp_path: Path) -> None:
    local = settings(tmp_path, None)
    local.ensure_local_pii_key()
    assert (tmp_path / "pii.key").stat().st_mode & 0o777 == 0o600
    _, _, value, _ = Emitter(local).serialize(event_with_pii())
    assert b"pii:v1:" in value
