"""The producer SDK for backend services: validate, key, send to the event's topic.

Built on kafka-python. ``acks=all`` and idempotence by default (settings), lz4
compression, linger/batching, a bounded buffer: when the broker cannot be reached
for ``max_block_ms``, ``emit`` raises :class:`BrokerUnavailable` instead of hanging.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from prometheus_client import CollectorRegistry

from touchstream.producers import metrics as emitter_metrics
from touchstream.schemas import Event, Invalid, family, parse_object
from touchstream.schemas.pii import PiiKeyMissing, Pseudonymiser
from touchstream.settings import Settings


class EmitError(Exception):
    """Base of the emitter's typed errors."""


class InvalidEvent(EmitError):
    """The event does not validate; nothing was sent."""

    def __init__(self, invalid: Invalid) -> None:
        super().__init__(invalid.describe())
        self.invalid = invalid


class EventTooLarge(EmitError):
    """The serialized event is over the broker's request limit; nothing was sent."""


class UnprotectedPii(EmitError):
    """The event carries email/phone/IP and no PII key is configured; nothing was sent."""


class BrokerUnavailable(EmitError):
    """The broker did not take the event within max_block_ms (down, or buffer full)."""


class Emitter:
    """Send events to Touchstream's raw topics. Use as a context manager (flush + close)."""

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        client_id: str = "touchstream-emitter",
    ) -> None:
        if not settings.kafka.bootstrap_servers:
            raise ValueError("the emitter needs kafka.bootstrap_servers (is the stack up?)")
        self._settings = settings
        self._client_id = client_id
        self._metrics = emitter_metrics.create(registry or CollectorRegistry())
        self._producer: KafkaProducer | None = None
        self._pii = Pseudonymiser(settings.pii_key_bytes())
        self.failures: list[BaseException] = []
        self._reported = 0  # failures already raised by flush()

    def _connect(self) -> KafkaProducer:
        kafka = self._settings.kafka
        config: dict[str, Any] = {
            "bootstrap_servers": kafka.bootstrap_servers,
            "client_id": self._client_id,
            "acks": "all" if kafka.acks == "all" else int(kafka.acks),
            "enable_idempotence": kafka.enable_idempotence,
            "compression_type": None
            if kafka.compression_type == "none"
            else kafka.compression_type,
            "linger_ms": kafka.linger_ms,
            "batch_size": kafka.batch_bytes,
            "max_request_size": kafka.max_request_bytes,
            "max_block_ms": kafka.max_block_ms,
            # The constructor bootstraps eagerly: bound it by the same deadline.
            "bootstrap_timeout_ms": kafka.max_block_ms,
            "delivery_timeout_ms": kafka.delivery_timeout_ms,
            # kafka-python wants delivery_timeout > linger + request_timeout.
            "request_timeout_ms": max(
                500, min(30_000, kafka.delivery_timeout_ms - kafka.linger_ms - 1000)
            ),
            **kafka.security_kwargs(),
        }
        try:
            return KafkaProducer(**config)
        except KafkaError as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}"
            ) from exc

    @property
    def producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = self._connect()
        return self._producer

    def serialize(self, event: Event | Mapping[str, Any]) -> tuple[str, bytes, bytes, Event]:
        """(topic, key, value, event) for an event, or a typed error. Sends nothing.

        PII properties (email, phone, IP: schemas/pii.py) are pseudonymised first,
        so their clear values are never serialised.
        """
        data = event.wire() if isinstance(event, Event) else event
        try:
            data, found = self._pii.event(dict(data)) if isinstance(data, Mapping) else (data, [])
        except PiiKeyMissing as exc:
            self._metrics.invalid.labels("unprotected_pii").inc()
            raise UnprotectedPii(str(exc)) from exc
        if found or not isinstance(event, Event):
            parsed = parse_object(data)
            if isinstance(parsed, Invalid):
                self._metrics.invalid.labels(parsed.reason).inc()
                raise InvalidEvent(parsed)
            event = parsed
        value = event.model_dump_json(exclude_none=True).encode("utf-8")
        if len(value) > self._settings.kafka.max_request_bytes - 512:
            self._metrics.invalid.labels("too_large").inc()
            raise EventTooLarge(
                f"event {event.event_id} is {len(value)} bytes; the limit is "
                f"{self._settings.kafka.max_request_bytes - 512}"
            )
        topic = self._settings.topic(family(event.event_type))
        return topic, event.identity.encode("utf-8"), value, event

    def emit(self, event: Event | Mapping[str, Any]) -> Any:
        """Validate and send one event; returns kafka-python's future of its metadata."""
        topic, key, value, parsed = self.serialize(event)
        headers = [
            ("event_type", parsed.event_type.encode()),
            ("schema_version", str(parsed.schema_version).encode()),
        ]
        return self.send_raw(topic, key, value, headers)

    def send_raw(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Send bytes as they are (used to replay files and to inject malformed input)."""
        started = time.perf_counter()
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers or [])
        except KafkaTimeoutError as exc:
            self._metrics.failed.labels(topic).inc()
            raise BrokerUnavailable(
                f"the broker did not take the event within {self._settings.kafka.max_block_ms} ms"
            ) from exc
        size = len(value)

        def delivered(_: Any) -> None:
            self._metrics.sent.labels(topic).inc()
            self._metrics.bytes.labels(topic).inc(size)
            self._metrics.latency.labels(topic).observe(time.perf_counter() - started)

        def failed(exc: BaseException) -> None:
            self._metrics.failed.labels(topic).inc()
            self.failures.append(exc)

        future.add_callback(delivered)
        future.add_errback(failed)
        return future

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every event sent so far is acknowledged; raise
        :class:`BrokerUnavailable` if any was not (they are in ``failures``)."""
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as exc:
            raise BrokerUnavailable(f"events not acknowledged within {timeout_s}s") from exc
        self._raise_new_failures()

    def _raise_new_failures(self) -> None:
        new = self.failures[self._reported :]
        self._reported = len(self.failures)
        if new:
            raise BrokerUnavailable(f"{len(new)} events were not delivered: {new[0]!r}")

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush for up to ``timeout_s``, then release the producer (its thread and
        sockets) in any case; raise :class:`BrokerUnavailable` if events were left
        undelivered."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        undelivered = False
        sender = getattr(producer, "_sender", None)  # kafka-python's network thread
        try:
            producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            undelivered = True
            if sender is not None:
                sender.force_close()  # fail what cannot be delivered, stop the thread
        with contextlib.suppress(KafkaTimeoutError):
            producer.close(timeout=0 if undelivered else timeout_s)
        if undelivered and sender is not None:
            sender.join(timeout=max(1.0, timeout_s))
        if undelivered:
            raise BrokerUnavailable(f"events still undelivered after {timeout_s}s; closed")
        self._raise_new_failures()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()
