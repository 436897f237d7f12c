"""Where the worker's keyed outputs land, computed without a broker."""

from __future__ import annotations

from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from touchstream.streams.app import BUNDLE_ITEMS, bundle_chunks, contribution_key
from touchstream.streams.outputs import partition_of


def test_partition_of_matches_the_java_client_partitioner() -> None:
    # kafka-python (the emitters' client) implements the same murmur2 as Java's:
    # the worker's idea of a key's partition is the one every client uses.
    for key in [b"nps|web|checkout", b"stock|active_delta", b"", b"\xff" * 40]:
        expected = (kafka_python_murmur2(key) & 0x7FFFFFFF) % 12
        assert partition_of(key, 12) == expected
    assert {partition_of(f"k{i}".encode(), 6) for i in range(200)} == set(range(6))


def test_stock_kpis_are_keyed_by_their_stock() -> None:
    # A churn window's numerator and the stock deltas of its denominator are
    # counted in one partition; per-event KPIs are keyed by their own group.
    assert contribution_key("churn|web|checkout") == "stock|active_delta"
    assert contribution_key("churn_detractor|all|all") == "stock|active_delta"
    assert contribution_key("churn|all|all") == "stock|active_delta"
    assert contribution_key("upsell|app|plans") == "stock|subscriptions"
    assert contribution_key("nps|web|checkout") == "nps|web|checkout"
    assert contribution_key("isn:delivery|all|all") == "isn:delivery|all|all"


def test_outcome_bundles_are_chunked_in_order_and_nothing_is_lost() -> None:
    ops = [{"n": i} for i in range(2 * BUNDLE_ITEMS + 3)]
    customers = {f"c{i}": [[i, "touch"]] * 3 for i in range(BUNDLE_ITEMS + 1)}
    links = {f"a{i}": [i, f"c{i}"] for i in range(3)}
    anonymous = {f"a{i}": [[i, "touch"]] for i in range(BUNDLE_ITEMS)}
    body = {"ops": ops, "customers": customers, "links": links, "anonymous": anonymous}
    chunks = list(bundle_chunks(body))
    # steps, then customers, then links, then anonymous ids: one part per message
    assert [next(iter(c)) for c in chunks] == ["ops"] * 3 + ["customers"] * 2 + [
        "links",
        "anonymous",
    ]
    assert all(len(c) == 1 and len(next(iter(c.values()))) <= BUNDLE_ITEMS for c in chunks)
    assert [op for c in chunks for op in c.get("ops", [])] == ops
    for part, want in (("customers", customers), ("links", links), ("anonymous", anonymous)):
        merged = {k: v for c in chunks for k, v in c.get(part, {}).items()}
        assert merged == want and list(merged) == list(want)
    assert list(bundle_chunks({"ops": [], "customers": {}})) == []
