"""One partition of the outcome events, as the outcome stage keeps it: checkout
and cart trackers, the customer book, the anonymous ids' book and the progress
marks of the raw sources, in one :class:`BatchState` (checkpointed to the
compacted outcome-state topic after each batch; keys prefixed by what they are:
:class:`PrefixedStore`)."""

from __future__ import annotations

from collections.abc import Mapping

from touchstream.streams.customers import AnonymousBook, CustomerBook
from touchstream.streams.outcomes import KINDS, OutcomeTracker
from touchstream.streams.spill import SpillStore
from touchstream.streams.state import BatchState, PrefixedStore


class OutcomePartition(BatchState):
    # Entities at rest as their checkpointed bytes: a customer's or anonymous id's
    # state is read again at its next interaction or due time, often hours of
    # event time later (BatchState.keep_encoded).
    keep_encoded = True

    def __init__(
        self,
        partition: int,
        abandonment_timeout_s: float,
        churn_horizon_s: float,
        records: Mapping[str, bytes | None] | SpillStore | None = None,
    ) -> None:
        super().__init__(records)
        self.partition = partition
        self.trackers = {
            kind: OutcomeTracker(abandonment_timeout_s, store=self._store(kind)) for kind in KINDS
        }
        self.book = CustomerBook(self._store("customer"), churn_horizon_s)
        self.anonymous = AnonymousBook(self._store("anonymous"), churn_horizon_s)
        self.marks = self._store(f"mark|{partition}")
        # The watermark of the latest decisions (not state: reported to the KPI
        # stage, whose clock it holds back, once they are flushed).
        self.watermark: float | None = None
        for tracker in self.trackers.values():
            tracker.rebuild()
        self.book.rebuild()
        self.anonymous.rebuild()

    def _store(self, prefix: str) -> PrefixedStore:
        return PrefixedStore(self.store, prefix)
