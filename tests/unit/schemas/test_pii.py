"""PII pseudonymisation: keyed, normalised, deep, idempotent, never in clear."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from touchstream.schemas.pii import PREFIX, REDACTED, PiiKeyMissing, Pseudonymiser

KEY = b"k" * 32


def expected(kind: str, normalised: str, key: bytes = KEY) -> str:
    digest = hmac.new(key, f"{kind}:{normalised}".encode(), hashlib.sha256).hexdigest()
    return PREFIX + digest[:32]


def test_values_are_normalised_then_keyed() -> None:
    pii = Pseudonymiser(KEY)
    assert pii.token("email", " Ana@Example.COM ") == expected("email", "ana@example.com")
    assert pii.token("phone", "+34 600-11-22-33") == expected("phone", "+34600112233")
    assert pii.token("ip", "2001:db8:0:0::1") == expected("ip", "2001:db8::1")
    assert Pseudonymiser(b"another key, 16+").token("email", "a@b.c") != pii.token("email", "a@b.c")


def test_properties_at_any_depth_by_name() -> None:
    pii = Pseudonymiser(KEY)
    props = {
        "email": "a@b.c",
        "billing_email": "A@B.C",
        "contact": {"phone_number": "600 1", "note": "keep"},
        "devices": [{"client_ip": "10.0.0.1"}],
        "emailed": "not pii",
        "score": 3,
    }
    out, found = pii.properties(props)
    assert sorted(found) == [
        "billing_email",
        "contact.phone_number",
        "devices[0].client_ip",
        "email",
    ]
    assert out["email"] == out["billing_email"] == expected("email", "a@b.c")
    assert out["contact"] == {"phone_number": expected("phone", "6001"), "note": "keep"}
    assert out["devices"][0]["client_ip"] == expected("ip", "10.0.0.1")
    assert (out["emailed"], out["score"]) == ("not pii", 3)
    assert props["email"] == "a@b.c"  # the input is not mutated
    again, found_again = pii.properties(out)
    assert again == out and found_again == []  # idempotent: producer and stream may both apply


def test_without_a_key_pii_is_refused_or_redacted() -> None:
    pii = Pseudonymiser(None)
    with pytest.raises(PiiKeyMissing, match="TOUCHSTREAM_PII_KEY"):
        pii.properties({"phone": "600"})
    out, found = pii.properties({"phone": "600", "x": 1}, redact=True)
    assert out == {"phone": REDACTED, "x": 1} and found == ["phone"]
    assert pii.properties({"x": 1}) == ({"x": 1}, [])


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymiser(b"short")
