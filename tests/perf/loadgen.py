"""Load for the benchmark, run as a child process of ``tests.perf.bench`` so that the
generator's memory and CPU never count against the sink's process.

Settings come from the TOUCHSTREAM_* environment (the bench passes its own). Progress
and the result are JSON lines on stdout: ``{"stage": ..., "done": n, "total": n}``
while working, then one ``{"result": {...}}``.

    python -m tests.perf.loadgen preload --events 1000000 [--seed 11]
    python -m tests.perf.loadgen preload --events 1000000 --distinct PREFIX
    python -m tests.perf.loadgen steady --rate 10000 --seconds 30 --prefix PREFIX

- ``preload``: simulated storefront traffic (6 h of event time ending now), sent as
  fast as the producer goes. With ``--distinct``, every event gets its own customer
  id (PREFIX + number) and the event time of its sending, for the memory-growth run.
- ``steady``: simulated events at a fixed rate, each stamped with the wall clock when
  it is sent (occurred_at = now, millisecond precision). Identities are prefixed so
  the bench can find them; every ``--probe-every``-th event gets an identity of its
  own under PREFIX + "p", which the bench polls for to time "queryable"; the result
  says when each probe and each alert-raising response was stamped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer

from touchstream.producers.simulator import SimulationConfig, Simulator, encode, key_of
from touchstream.schemas.events import family
from touchstream.schemas.records import alert_id_for
from touchstream.settings import Settings, load_settings
from touchstream.streams.outputs import fast_lz4, partition_of, send_batches

SCORE_KPIS = {"nps_response": "nps", "csat_response": "csat", "ces_response": "ces"}
EVENTS_PER_CUSTOMER = 24.0  # the simulator's average (measured: ~24.9), to size a run
# Same width as the stamps that replace it: a bytes.replace, no re-encoding per send.
PLACEHOLDER = "2000-01-01T00:00:00.000Z"
Wire = tuple[str, bytes, bytes]  # (topic family, key, value)


def say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def stamp(at: float) -> bytes:
    """Epoch seconds → ISO 8601 UTC with milliseconds (ClickHouse keeps DateTime64(3))."""
    text = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z").encode()


def simulated(events: int, seed: int, end: datetime, hours: float = 6) -> list[dict[str, Any]]:
    """At least ``events`` clean simulated events (``hours`` of event time ending at
    ``end``, ordered by occurred_at), cut to exactly that many."""
    customers = max(10, math.ceil(events / EVENTS_PER_CUSTOMER * 1.05))
    while True:
        config = SimulationConfig(
            customers=customers,
            seed=seed,
            start=end - timedelta(hours=hours),
            duration_s=int(hours * 3600),
        )
        out = list(Simulator(config).events())
        if len(out) >= events:
            return out[:events]
        customers = math.ceil(customers * events / max(1, len(out)) * 1.05)


def producer_for(settings: Settings) -> AIOKafkaProducer:
    kafka = settings.kafka
    fast_lz4()  # lz4 as the emitters' kafka-python sends it, not aiokafka's level 9
    return AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        client_id="touchstream-bench-load",
        acks="all",
        # Raw input is batched as any service's producer batches it: the local broker
        # needs one-record batches only for Faust's table changelogs (PLATFORM.md).
        compression_type=None if kafka.compression_type == "none" else kafka.compression_type,
        linger_ms=20,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
        **kafka.security_kwargs(),
    )


async def send_batched(
    producer: AIOKafkaProducer, topics: dict[str, str], partitions: int, records: list[Wire]
) -> list[asyncio.Future[Any]]:
    """Queue ``records`` as one record batch per (topic, partition), the partition
    the default partitioner would pick for the key; returns the delivery futures.
    A ``producer.send`` per record cost the steady load ~75 µs per event (0.75 of
    a core at 10k events/s, taken from the pipeline it measures on 2 cores)."""
    by_partition: dict[tuple[str, int], list[tuple[bytes, bytes]]] = {}
    for fam, key, value in records:
        by_partition.setdefault((topics[fam], partition_of(key, partitions)), []).append(
            (key, value)
        )
    sent = []
    for (topic, partition), items in by_partition.items():
        sent += [delivered async for delivered in send_batches(producer, topic, partition, items)]
    return sent


async def send_all(
    settings: Settings, wire: list[Wire], placeholder: bool, chunk: int = 5000
) -> float:
    """Send everything as fast as the producer goes; returns seconds. With
    ``placeholder``, occurred_at is stamped per chunk with the time of sending."""
    topics = settings.raw_topics()
    producer = producer_for(settings)
    await producer.start()
    started = time.perf_counter()
    try:
        for n in range(0, len(wire), chunk):
            records = wire[n : n + chunk]
            if placeholder:
                now = stamp(time.time())
                records = [(f, k, v.replace(PLACEHOLDER.encode(), now, 1)) for f, k, v in records]
            await asyncio.gather(
                *await send_batched(producer, topics, settings.kafka.partitions, records)
            )
            say(stage="send", done=min(n + chunk, len(wire)), total=len(wire))
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started


def preload(settings: Settings, events: int, seed: int, distinct: str | None) -> dict[str, Any]:
    say(stage="generate", done=0, total=events)
    t0 = time.perf_counter()
    clean = simulated(events, seed, datetime.now(UTC))
    generate_s = time.perf_counter() - t0
    say(stage="generate", done=events, total=events)
    t0 = time.perf_counter()
    wire: list[Wire] = []
    by_type: Counter[str] = Counter()
    identities: set[bytes] = set()
    for n, event in enumerate(clean):
        by_type[event["event_type"]] += 1
        if distinct is not None:
            event["customer_id"] = f"{distinct}{n:08d}"
            event["occurred_at"] = PLACEHOLDER
        key = key_of(event)
        identities.add(key)
        wire.append((family(event["event_type"]), key, encode(event)))
        if n % 50_000 == 0:
            say(stage="encode", done=n, total=events)
    del clean
    encode_s = time.perf_counter() - t0
    say(stage="encode", done=events, total=events)
    send_s = asyncio.run(send_all(settings, wire, placeholder=distinct is not None))
    return {
        "events": len(wire),
        "bytes": sum(len(value) for _, _, value in wire),
        "identities": len(identities),
        "responses": {kpi: by_type.get(t, 0) for t, kpi in SCORE_KPIS.items()},
        "generate_s": round(generate_s, 2),
        "encode_s": round(encode_s, 2),
        "send_s": round(send_s, 2),
    }


def raises_alert(event: dict[str, Any]) -> bool:
    """PRODUCT.md's closed loop: a detractor NPS (0-6), CSAT <= 2, CES <= 2 or a
    negative comment (its label, else its 1-5 score <= 2) raises an alert."""
    props = event.get("properties") or {}
    score = props.get("score")
    kind = event["event_type"]
    if kind == "nps_response":
        return score is not None and score <= 6
    if kind in ("csat_response", "ces_response"):
        return score is not None and score <= 2
    if kind == "comment":
        sentiment = props.get("sentiment")
        return sentiment == "negative" or (sentiment is None and score is not None and score <= 2)
    return False


@dataclass
class SteadyLoad:
    wire: list[Wire]
    probes: dict[int, str]  # index → the probe's own identity
    alerts: dict[int, str]  # index → the alert id its response should raise


def steady_load(events: int, seed: int, prefix: str, probe_every: int) -> SteadyLoad:
    load = SteadyLoad([], {}, {})
    for n, event in enumerate(simulated(events, seed, datetime.now(UTC))):
        if n % probe_every == 0:
            event["customer_id"] = load.probes[n] = f"{prefix}p{n:08d}"
        else:
            if event.get("customer_id"):
                event["customer_id"] = prefix + "c" + event["customer_id"]
            if event.get("anonymous_id"):
                event["anonymous_id"] = prefix + "a" + event["anonymous_id"]
        if raises_alert(event):
            load.alerts[n] = alert_id_for(event["event_id"])
        event["occurred_at"] = PLACEHOLDER
        load.wire.append((family(event["event_type"]), key_of(event), encode(event)))
    return load


async def send_steady(settings: Settings, load: SteadyLoad, rate: int) -> dict[str, Any]:
    """``rate`` events/s in 10 ms slices, each slice stamped with its sending time
    (occurred_at, to the millisecond); returns when each probe and alert-raising
    response was stamped. The stamped slices queue for a sender task, which sends
    what has queued as record batches: a partition's next batch waits until the
    producer has taken its last one, and that wait must not hold the schedule."""
    topics = settings.raw_topics()
    per_slice = max(1, rate // 100)
    producer = producer_for(settings)
    await producer.start()
    placeholder = PLACEHOLDER.encode()
    wire = load.wire
    stamped: dict[str, float] = {}  # probe identity or alert id → occurred_at
    behind = 0.0  # how late the slowest slice left, against its schedule
    queued: list[Wire] = []
    more = asyncio.Event()
    done = False

    async def sender() -> list[asyncio.Future[Any]]:
        sent: list[asyncio.Future[Any]] = []
        while queued or not done:
            if not queued:
                more.clear()
                await more.wait()
                continue
            records = queued[:]
            del queued[:]
            sent += await send_batched(producer, topics, settings.kafka.partitions, records)
        return sent

    sending = asyncio.create_task(sender())
    cpu_started = time.process_time()
    try:
        started = time.perf_counter()
        for n in range(0, len(wire), per_slice):
            due = started + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            behind = max(behind, time.perf_counter() - due)
            at = round(time.time(), 3)
            now = stamp(at)
            for i in range(n, min(n + per_slice, len(wire))):
                fam, key, value = wire[i]
                queued.append((fam, key, value.replace(placeholder, now, 1)))
                for marks in (load.probes, load.alerts):
                    if i in marks:
                        stamped[marks[i]] = at
            more.set()
            if sending.done():  # it failed: say why now
                await sending
            if n % (per_slice * 100) == 0:
                say(stage="steady", done=n, total=len(wire))
        done = True
        more.set()
        await asyncio.gather(*await sending)  # a batch not delivered fails the run
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        sending.cancel()
        await producer.stop()
    say(stage="steady", done=len(wire), total=len(wire))
    return {
        "events": len(wire),
        "seconds": round(elapsed, 2),
        "rate": round(len(wire) / elapsed),
        "max_behind_s": round(behind, 3),
        "cpu_cores": round(cpu / elapsed, 3),  # this process's, while it sent
        "probes": {identity: stamped[identity] for identity in load.probes.values()},
        "alerts": {alert_id: stamped[alert_id] for alert_id in load.alerts.values()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    pre = sub.add_parser("preload")
    pre.add_argument("--events", type=int, required=True)
    pre.add_argument("--seed", type=int, default=11)
    pre.add_argument("--distinct", default=None, help="customer id prefix: one per event")
    steady = sub.add_parser("steady")
    steady.add_argument("--rate", type=int, required=True)
    steady.add_argument("--seconds", type=int, required=True)
    steady.add_argument("--seed", type=int, default=29)
    steady.add_argument("--prefix", required=True)
    steady.add_argument("--probe-every", type=int, default=50)
    args = parser.parse_args()
    settings = load_settings()
    if args.mode == "preload":
        say(result=preload(settings, args.events, args.seed, args.distinct))
    else:
        say(stage="generate", done=0, total=args.rate * args.seconds)
        load = steady_load(args.rate * args.seconds, args.seed, args.prefix, args.probe_every)
        say(result=asyncio.run(send_steady(settings, load, args.rate)))


if __name__ == "__main__":
    main()
