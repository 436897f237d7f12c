"""One valid wire event per event type of the contract, for tests."""

from __future__ import annotations

import uuid
from typing import Any

PROPERTIES: dict[str, dict[str, Any]] = {
    "page_view": {"url": "/"},
    "product_view": {"sku": "sku-1", "category": "shoes"},
    "search": {"query": "boots", "results": 3},
    "add_to_cart": {
        "cart_id": "cart-1",
        "sku": "sku-1",
        "category": "shoes",
        "quantity": 2,
        "price": "19.90",
        "currency": "EUR",
    },
    "remove_from_cart": {
        "cart_id": "cart-1",
        "sku": "sku-1",
        "category": "shoes",
        "quantity": 1,
        "price": "19.90",
        "currency": "EUR",
    },
    "checkout_started": {
        "checkout_id": "chk-1",
        "cart_id": "cart-1",
        "value": "39.80",
        "currency": "EUR",
    },
    "checkout_step": {"checkout_id": "chk-1", "step": "payment"},
    "payment_failed": {"checkout_id": "chk-1", "reason": "declined"},
    "order_placed": {
        "order_id": "ord-1",
        "checkout_id": "chk-1",
        "total": "39.80",
        "currency": "EUR",
        "items": [{"sku": "sku-1", "category": "shoes", "quantity": 2, "price": "19.90"}],
    },
    "order_cancelled": {"order_id": "ord-1", "reason": "changed mind"},
    "order_returned": {"order_id": "ord-1"},
    "order_delivered": {"order_id": "ord-1"},
    "subscription_started": {"subscription_id": "sub-1", "plan": "basic"},
    "subscription_cancelled": {"subscription_id": "sub-1", "plan": "basic"},
    "cancellation_retained": {"subscription_id": "sub-1", "plan": "basic"},
    "plan_upgraded": {"subscription_id": "sub-1", "plan": "premium"},
    "support_contact": {"reason": "where is my order", "resolved": False},
    "identify": {},
    "nps_response": {"score": 9, "order_id": "ord-1", "comment": "great"},
    "csat_response": {"score": 4},
    "ces_response": {"score": 6},
    "isn_response": {"attribute": "delivery", "score": 2},
    "comment": {"text": "too slow", "sentiment": "negative"},
    "case_closed": {"alert_id": "al-1", "resolution": "called back"},
}


def wire(event_type: str, **envelope: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": "2026-11-02T09:30:00Z",
        "customer_id": "c-1",
        "anonymous_id": "a-1",
        "session_id": "s-1",
        "channel": "web",
        "touchpoint": "checkout",
        "properties": dict(PROPERTIES[event_type]),
    }
    event.update(envelope)
    return event
