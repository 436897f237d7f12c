"""PII pseudonymisation: email, phone and IP values become keyed hashes.

PRODUCT.md: PII is never stored in clear; it is pseudonymised with a keyed hash
before it leaves the producer, or at the latest in the stream. Which values are
PII is decided by property name, at any depth of ``properties``:
``email``, ``phone``, ``phone_number``, ``ip``, ``ip_address``, and any name
ending in ``_email``, ``_phone`` or ``_ip`` (``billing_email``, ``client_ip``).

A pseudonym is ``pii:v1:`` + the first 32 hex digits of HMAC-SHA256(key,
"<kind>:<normalised value>"): the same person gets the same pseudonym from every
service that shares the key (journeys still join), and nobody without the key
can test a guess. Values are normalised first (email trimmed and lower-cased,
phone reduced to digits and a leading +, IP in canonical form). A value that is
already a pseudonym is left alone, so the producer and the stream can both apply
it. Erasure (``touchstream erase``) removes the pseudonymised rows as well.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from typing import Any

PREFIX = "pii:v1:"
REDACTED = "[redacted]"
NAMES = {
    "email": "email",
    "phone": "phone",
    "phone_number": "phone",
    "ip": "ip",
    "ip_address": "ip",
}
SUFFIXES = {"_email": "email", "_phone": "phone", "_ip": "ip"}


class PiiKeyMissing(ValueError):
    """PII met with no key configured: it must not be sent or stored in clear."""

    def __init__(self, fields: list[str]) -> None:
        super().__init__(
            f"PII in {', '.join(sorted(set(fields)))} and no key to pseudonymise it: "
            "set TOUCHSTREAM_PII_KEY (the same secret for every emitter and worker)"
        )
        self.fields = fields


def kind_of(name: str) -> str | None:
    """'email', 'phone' or 'ip' when a property of that name holds PII."""
    lowered = name.lower()
    if lowered in NAMES:
        return NAMES[lowered]
    for suffix, kind in SUFFIXES.items():
        if lowered.endswith(suffix):
            return kind
    return None


def normalise(kind: str, value: str) -> str:
    value = value.strip()
    if kind == "email":
        return value.lower()
    if kind == "phone":
        digits = re.sub(r"\D", "", value)
        return ("+" if value.startswith("+") else "") + digits
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value.lower()


class Pseudonymiser:
    """Replaces PII values in an event's properties. ``key=None`` only detects."""

    def __init__(self, key: bytes | None) -> None:
        if key is not None and len(key) < 16:
            raise ValueError("the PII key must be at least 16 bytes")
        self._key = key

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def token(self, kind: str, value: str) -> str:
        if self._key is None:
            raise PiiKeyMissing([kind])
        message = f"{kind}:{normalise(kind, value)}".encode()
        return PREFIX + hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def properties(
        self, properties: Any, redact: bool = False, path: str = ""
    ) -> tuple[Any, list[str]]:
        """(properties with PII replaced, dotted paths replaced). Never mutates the input.

        Without a key, ``redact=False`` raises :class:`PiiKeyMissing` when PII is
        present, and ``redact=True`` replaces it with ``[redacted]`` (dead letters).
        ``path`` is where ``properties`` sits, for the paths reported.
        """
        found: list[str] = []
        out = self._walk(properties, path, found, redact)
        return (out if found else properties), found

    def _walk(self, node: Any, path: str, found: list[str], redact: bool) -> Any:
        if isinstance(node, dict):
            out = {}
            for name, value in node.items():
                where = f"{path}.{name}" if path else str(name)
                kind = kind_of(str(name))
                if kind is not None and isinstance(value, str) and value:
                    if value.startswith(PREFIX) or value == REDACTED:
                        out[name] = value
                        continue
                    found.append(where)
                    if self._key is None:
                        if not redact:
                            raise PiiKeyMissing([where])
                        out[name] = REDACTED
                    else:
                        out[name] = self.token(kind, value)
                else:
                    out[name] = self._walk(value, where, found, redact)
            return out
        if isinstance(node, list):
            return [
                self._walk(value, f"{path}[{i}]", found, redact) for i, value in enumerate(node)
            ]
        return node

    def event(self, data: dict[str, Any], redact: bool = False) -> tuple[dict[str, Any], list[str]]:
        """A wire dict with its ``properties`` pseudonymised."""
        properties = data.get("properties")
        if not isinstance(properties, dict):
            return data, []
        cleaned, found = self.properties(properties, redact)
        return ({**data, "properties": cleaned} if found else data), found
