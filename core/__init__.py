"""Touchstream: customer-journey analytics on Kafka and ClickHouse.

The stages live in subpackages: schemas (what an event is), producers (how it
gets into Kafka), streams (what is computed), sinks (where it lands).
"""

__version__ = "0.1.0"
