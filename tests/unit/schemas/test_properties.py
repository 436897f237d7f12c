"""Property tests for every event model of the contract (PRODUCT.md, Events).

``PROPS`` below is the contract's property table written out as hypothesis
strategies: for each event type, each property with the values it must accept,
the values it must refuse, and whether it is required. From it:

- a valid wire dict (random envelope, identity, properties, unknown extras) parses
  to the right model with the values sent, and serializing it again is stable;
- breaking one constraint at a time (a property, an envelope field, the identity,
  the event type) is refused with the right reason class and the field path named;
- arbitrary bytes and JSON never make ``parse_event`` raise.
"""

from __future__ import annotations

import functools
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from touchstream.schemas import (
    EVENT_ADAPTER,
    EVENT_MODELS,
    EVENT_TYPES,
    Event,
    Invalid,
    parse_event,
    parse_object,
)
from touchstream.schemas.currencies import ISO_4217


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


# ~200 parametrized properties (one per event type, property or mutation), ~2,500
# examples in all: the module runs in ~25 s on a busy 2-core machine. Raise the
# budgets locally to dig deeper.
FEW = budget(8)  # one fixed mutation per case: only the rest of the event varies
SOME = budget(10)
MORE = budget(15)
MANY = budget(100)

Json = Any  # a value json.loads can return


# --- building blocks: values the models must accept ---------------------------------

# Id characters: anything but whitespace, controls and surrogates, so that stripping
# is only ever about the padding added below (pydantic trims Unicode White_Space).
_ID_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp"))
_ID_CORE = st.text(_ID_CHARS, min_size=1, max_size=24) | st.integers(100, 128).map(
    lambda n: "é" * n  # up to the 128-character limit
)
_PAD = st.sampled_from(["", " ", "\t", "  "])
IDS = st.tuples(_PAD, _ID_CORE, _PAD).map("".join)  # Id strips whitespace


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


_LOWER = string.ascii_lowercase
CASES: list[Callable[[str], str]] = [str.upper, str.lower, str.title]
LABELS = st.sampled_from(
    ["web", "mobile_app", "whatsapp", "call_center", "email", "store", "marketplace"]
) | st.tuples(st.sampled_from(_LOWER), st.text(_LOWER + string.digits + "_", max_size=31)).map(
    "".join
)  # ^[a-z][a-z0-9_]{0,31}$
TEXTS = st.text(st.characters(codec="utf-8"), max_size=40) | st.integers(8000, 8192).map(
    lambda n: "x" * n
)
NON_EMPTY_TEXTS = TEXTS.filter(bool)
MONEY = (
    st.decimals(min_value=0, max_value=Decimal("99999999999999.9999"), places=4).map(str)
    | st.integers(0, 10**14 - 1)
    | st.decimals(min_value=0, max_value=10**9, places=2).map(float)  # a JSON number
)
CURRENCIES = st.builds(  # any letter case: the model normalises to upper case
    lambda code, case: case(code), st.sampled_from(sorted(ISO_4217)), st.sampled_from(CASES)
)
QUANTITIES = st.integers(1, 10_000)
SENTIMENTS = st.sampled_from(["positive", "neutral", "negative"])

# Fixed offsets from -12:00 to +14:00, any minute: the zone is part of the wire form.
ZONES = st.integers(-12 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
AWARE = st.datetimes(
    min_value=datetime(1900, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive by API
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=ZONES,
)


def _iso(value: datetime) -> str:
    text = value.isoformat()
    return text.replace("+00:00", "Z") if text.endswith("+00:00") else text


# Unknown extra properties: any JSON value except a bare null, which wire() (and the
# emitter's model_dump_json(exclude_none=True)) drops as if it were an unset field.
_JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES: st.SearchStrategy[Json] = st.recursive(
    _JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=4,
)
EXTRA_VALUES = JSON_VALUES.filter(lambda value: value is not None)


def extras(
    taken: frozenset[str], min_size: int = 0, max_size: int = 2
) -> st.SearchStrategy[dict[str, Json]]:
    keys = st.text(min_size=1, max_size=20).filter(lambda key: key not in taken)
    return st.dictionaries(keys, EXTRA_VALUES, min_size=min_size, max_size=max_size)


# --- values the models must refuse -------------------------------------------------

_LETTERS = st.text(string.ascii_letters, min_size=1, max_size=12)
_CONTAINERS = st.lists(st.integers(), max_size=2) | st.dictionaries(
    st.text(max_size=3), st.integers(), max_size=2
)
BAD_IDS = (
    st.just("")
    | st.text(" \t\r\n", min_size=1, max_size=4)  # blank once stripped
    | st.integers(129, 300).map(lambda n: "i" * n)
    | st.integers()
    | _CONTAINERS
)
BAD_LABELS = (
    st.just("")
    | st.from_regex(r"[A-Z0-9_][a-z0-9_]{0,8}", fullmatch=True)  # must start a-z
    | st.tuples(LABELS, st.sampled_from(list("-. A/é")), LABELS).map("".join)
    | st.integers(33, 60).map(lambda n: "l" * n)
    | st.integers()
    | _CONTAINERS
)
BAD_TEXTS = st.integers(8193, 9000).map(lambda n: "x" * n) | st.integers() | _CONTAINERS
BAD_MONEY = (
    st.decimals(max_value=Decimal("-0.0001"), places=4, allow_nan=False, allow_infinity=False).map(
        str
    )
    # more than 4 decimal places: an integer not ending in 0, scaled by 10^-5..10^-8
    | st.tuples(st.integers(1, 10**9).filter(lambda n: n % 10), st.integers(5, 8)).map(
        lambda t: str(Decimal(t[0]).scaleb(-t[1]))
    )
    | st.integers(10**14, 10**20)  # more than 14 digits before the point
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "abc", "", "1,5"])
    | _CONTAINERS
)
BAD_CURRENCIES = (
    st.text(string.ascii_letters, min_size=3, max_size=3).filter(
        lambda code: code.upper() not in ISO_4217
    )
    | st.text(string.ascii_letters, min_size=4, max_size=8)
    | st.sampled_from(["", "€", "US$", " EUR", "EU"])
    | st.integers(0, 999)  # the numeric code is not the contract
    | _CONTAINERS
)
_FRACTIONS = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda f: f != int(f) if abs(f) < 1e15 else False
)
_NOT_NUMBERS = _LETTERS.filter(lambda s: s.lower() not in {"nan", "inf", "infinity"})


def bad_ints(low: int | None, high: int | None) -> st.SearchStrategy[Any]:
    """Out of [low, high], fractional, non-numeric or not a scalar."""
    out: st.SearchStrategy[Any] = _FRACTIONS | _NOT_NUMBERS | _CONTAINERS
    if low is not None:
        out = out | st.integers(max_value=low - 1)
    if high is not None:
        out = out | st.integers(min_value=high + 1)
    return out


_BOOL_WORDS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}
BAD_BOOLS = (
    _LETTERS.filter(lambda s: s.lower() not in _BOOL_WORDS)
    | st.integers().filter(lambda n: n not in (0, 1))
    | _CONTAINERS
)
BAD_SENTIMENTS = st.text(max_size=12).filter(
    lambda s: s not in {"positive", "neutral", "negative"}
) | st.sampled_from(["Positive", "NEGATIVE", 1, 0])


# --- the contract's property table ---------------------------------------------------


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Prop:
    valid: st.SearchStrategy[Any]
    invalid: st.SearchStrategy[Any]
    required: bool = True
    expect: Callable[[Any], Any] = _same  # the parsed value, from the value sent
    seen: Callable[[Any], Any] = _same  # how to read the parsed attribute for comparison

    def refused(self) -> st.SearchStrategy[Any]:
        # null is a valid "absent" for an optional property, a violation for a required one
        return self.invalid | st.none() if self.required else self.invalid


def _money(value: Any) -> Decimal:
    return Decimal(str(value))


def ident(required: bool = True) -> Prop:
    return Prop(IDS, BAD_IDS, required, expect=_strip)


def text(required: bool = True) -> Prop:
    return Prop(TEXTS, BAD_TEXTS, required)


def label() -> Prop:
    return Prop(LABELS, BAD_LABELS)


def money() -> Prop:
    return Prop(MONEY, BAD_MONEY, expect=_money)


def currency() -> Prop:
    return Prop(CURRENCIES, BAD_CURRENCIES, expect=str.upper)


def score(low: int, high: int, required: bool = True) -> Prop:
    return Prop(st.integers(low, high), bad_ints(low, high), required)


ITEM_PROPS: dict[str, Prop] = {
    "sku": ident(),
    "category": ident(),
    "quantity": Prop(QUANTITIES, bad_ints(1, 10_000)),
    "price": money(),
}


def _merge(parts: tuple[dict[str, Json], ...]) -> dict[str, Json]:
    out: dict[str, Json] = {}
    for part in parts:
        out.update(part)
    return out


ORDER_ITEMS = st.tuples(
    st.fixed_dictionaries({name: prop.valid for name, prop in ITEM_PROPS.items()}),
    extras(frozenset(ITEM_PROPS), max_size=1),
).map(_merge)


def _expected_item(item: dict[str, Json]) -> dict[str, Any]:
    out = dict(item)
    for name, prop in ITEM_PROPS.items():
        out[name] = prop.expect(item[name])
    return out


ITEMS = Prop(
    st.lists(ORDER_ITEMS, min_size=1, max_size=3),
    st.just([])
    | st.just([{"sku": "s", "category": "c", "quantity": 1, "price": "1"}] * 1001)
    | st.lists(st.integers() | _LETTERS, min_size=1, max_size=2)
    | _LETTERS
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    expect=lambda items: [_expected_item(item) for item in items],
    seen=lambda items: [item.model_dump() for item in items],
)

CART_LINE = {
    "cart_id": ident(),
    "sku": ident(),
    "category": ident(),
    "quantity": Prop(QUANTITIES, bad_ints(1, 10_000)),
    "price": money(),
    "currency": currency(),
}
ORDER_UPDATE = {"order_id": ident(), "reason": text(required=False)}
SUBSCRIPTION = {"subscription_id": ident(), "plan": ident()}


def feedback(low: int, high: int) -> dict[str, Prop]:
    return {
        "score": score(low, high),
        "order_id": ident(required=False),
        "comment": text(required=False),
    }


PROPS: dict[str, dict[str, Prop]] = {
    "page_view": {"url": text(required=False), "referrer": text(required=False)},
    "product_view": {"sku": ident(), "category": ident(required=False)},
    "search": {
        "query": text(),
        "results": Prop(st.integers(min_value=0), bad_ints(0, None), required=False),
    },
    "add_to_cart": CART_LINE,
    "remove_from_cart": CART_LINE,
    "checkout_started": {
        "checkout_id": ident(),
        "cart_id": ident(),
        "value": money(),
        "currency": currency(),
    },
    "checkout_step": {"checkout_id": ident(), "step": label()},
    "payment_failed": {"checkout_id": ident(), "reason": text()},
    "order_placed": {
        "order_id": ident(),
        "checkout_id": ident(required=False),
        "total": money(),
        "currency": currency(),
        "items": ITEMS,
    },
    "order_cancelled": ORDER_UPDATE,
    "order_returned": ORDER_UPDATE,
    "order_delivered": ORDER_UPDATE,
    "subscription_started": SUBSCRIPTION,
    "subscription_cancelled": SUBSCRIPTION,
    "cancellation_retained": SUBSCRIPTION,
    "plan_upgraded": SUBSCRIPTION,
    "support_contact": {"reason": text(), "resolved": Prop(st.booleans(), BAD_BOOLS)},
    "identify": {},
    "nps_response": feedback(0, 10),
    "csat_response": feedback(1, 5),
    "ces_response": feedback(1, 7),
    "isn_response": {"attribute": label(), "score": score(1, 5)},
    "comment": {
        "text": Prop(NON_EMPTY_TEXTS, BAD_TEXTS | st.just("")),
        "sentiment": Prop(SENTIMENTS, BAD_SENTIMENTS, required=False),
        "score": score(1, 5, required=False),
    },
    "case_closed": {"alert_id": ident(), "resolution": text()},
}
TYPES = sorted(PROPS)
ENVELOPE_REQUIRED = ("event_id", "occurred_at", "channel", "touchpoint")
ENVELOPE_FIELDS = set(Event.model_fields) | {"properties"}


# --- valid events ----------------------------------------------------------------------


# Strategies are built once per event type (building them per draw costs more than
# drawing from them).
@functools.cache
def properties_of(
    event_type: str, min_extras: int = 0, max_extras: int = 2
) -> st.SearchStrategy[dict[str, Json]]:
    spec = PROPS[event_type]
    known = st.fixed_dictionaries(
        {name: prop.valid for name, prop in spec.items() if prop.required},
        optional={  # an optional property may be absent, null, or set
            name: st.none() | prop.valid for name, prop in spec.items() if not prop.required
        },
    )
    return st.tuples(known, extras(frozenset(spec), min_extras, max_extras)).map(_merge)


_ONE_OR_BOTH_IDS = st.one_of(
    st.fixed_dictionaries({"customer_id": IDS}),
    st.fixed_dictionaries({"anonymous_id": IDS}),
    st.fixed_dictionaries({"customer_id": IDS, "anonymous_id": IDS}),
)
_BOTH_IDS = st.fixed_dictionaries({"customer_id": IDS, "anonymous_id": IDS})


@functools.cache
def wire_events(
    event_type: str, min_extras: int = 0, max_extras: int = 2
) -> st.SearchStrategy[dict[str, Json]]:
    """Valid wire dicts of ``event_type``: what a service in any language may send."""
    properties = {"properties": properties_of(event_type, min_extras, max_extras)}
    # page_view and identify need no properties at all: then the key itself is optional.
    needs_properties = min_extras > 0 or any(p.required for p in PROPS[event_type].values())
    envelope = st.fixed_dictionaries(
        {
            "event_id": st.uuids().map(str),
            "event_type": st.just(event_type),
            "occurred_at": AWARE.map(_iso),
            "channel": LABELS,
            "touchpoint": LABELS,
            **(properties if needs_properties else {}),
        },
        optional={
            "schema_version": st.just(1),
            "session_id": IDS,
            "received_at": AWARE.map(_iso),
            **({} if needs_properties else properties),
        },
    )
    identity = _BOTH_IDS if event_type == "identify" else _ONE_OR_BOTH_IDS
    return st.tuples(envelope, identity).map(_merge)


def lean_events(event_type: str) -> st.SearchStrategy[dict[str, Json]]:
    """Valid events with at most one unknown property: the base of the mutation tests."""
    return wire_events(event_type, 0, 1)


ANY_EVENT = st.sampled_from(TYPES).flatmap(lean_events)


def encode(value: Json) -> bytes:
    return json.dumps(value).encode("utf-8")


def assert_rejected(
    result: object, reason: str, field: str, event: dict[str, Json] | None = None
) -> Invalid:
    """Refused for ``reason``, and every issue points at ``field`` (or inside it)."""
    assert isinstance(result, Invalid), f"accepted: {result!r}"
    assert result.reason == reason, result
    assert result.errors, result
    for issue in result.errors:
        assert issue.field == field or issue.field.startswith(f"{field}."), (field, result)
        assert issue.reason and issue.kind, issue
    assert field in result.describe()
    if event is not None:  # the dead letter says which type was sent, if it was a string
        sent_type = event.get("event_type")
        assert result.event_type == (sent_type if isinstance(sent_type, str) else None)
    return result


# --- the table is the contract, and it matches the models --------------------------------


def test_the_table_covers_every_model_and_its_properties() -> None:
    assert len(EVENT_MODELS) == 24 and set(PROPS) == set(EVENT_TYPES)
    for event_type, model in EVENT_TYPES.items():
        props_model = model.model_fields["properties"].annotation
        assert isinstance(props_model, type) and issubclass(props_model, BaseModel)
        fields = props_model.model_fields
        assert set(fields) == set(PROPS[event_type]), event_type
        required = {name for name, info in fields.items() if info.is_required()}
        assert required == {n for n, p in PROPS[event_type].items() if p.required}, event_type


# --- valid → the right model, stable on the wire -------------------------------------------


@pytest.mark.parametrize("event_type", TYPES)
@MORE
@given(data=st.data())
def test_a_valid_wire_dict_parses_to_its_model_with_the_values_sent(
    event_type: str, data: st.DataObject
) -> None:
    sent = data.draw(wire_events(event_type))
    event = parse_event(encode(sent))
    assert isinstance(event, EVENT_TYPES[event_type]), event
    assert parse_object(sent) == event == EVENT_ADAPTER.validate_python(sent)

    assert str(event.event_id) == sent["event_id"]
    assert event.schema_version == 1
    occurred = datetime.fromisoformat(sent["occurred_at"])
    assert event.occurred_at == occurred and event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.tzinfo is UTC
    for name in ("customer_id", "anonymous_id", "session_id"):
        assert getattr(event, name) == _strip(sent.get(name))
    assert event.identity == (event.customer_id or event.anonymous_id)
    assert (event.channel, event.touchpoint) == (sent["channel"], sent["touchpoint"])

    properties = sent.get("properties", {})
    for name, prop in PROPS[event_type].items():
        got = getattr(event.properties, name)
        if properties.get(name) is None:
            assert got is None
        else:
            assert prop.seen(got) == prop.expect(properties[name]), name
    unknown = {k: v for k, v in properties.items() if k not in PROPS[event_type]}
    assert (event.properties.model_extra or {}) == unknown


@pytest.mark.parametrize("event_type", TYPES)
@MORE
@given(data=st.data())
def test_serializing_a_parsed_event_and_parsing_it_again_is_stable(
    event_type: str, data: st.DataObject
) -> None:
    first = parse_event(encode(data.draw(wire_events(event_type))))
    assert not isinstance(first, Invalid), first
    forms = {
        "wire() as JSON": encode(first.wire()),
        "emitter form": first.model_dump_json(exclude_none=True).encode(),
        "full dump": first.model_dump_json().encode(),
        "adapter dump": EVENT_ADAPTER.dump_json(first),
    }
    for form, raw in forms.items():
        again = parse_event(raw)
        assert not isinstance(again, Invalid), (form, again)
        assert type(again) is type(first), form
        assert again == first, form
        assert again.wire() == first.wire(), form
        assert parse_object(json.loads(raw)) == first, form
    # The wire form is a fixed point: serializing twice gives the same bytes.
    second = parse_object(first.wire())
    assert not isinstance(second, Invalid), second
    assert encode(second.wire()) == encode(first.wire())


@pytest.mark.parametrize("event_type", TYPES)
@SOME
@given(data=st.data())
def test_unknown_extra_properties_survive_every_serialization(
    event_type: str, data: st.DataObject
) -> None:
    sent = data.draw(wire_events(event_type, min_extras=1))
    unknown = {k: v for k, v in sent["properties"].items() if k not in PROPS[event_type]}
    event = parse_event(encode(sent))
    assert not isinstance(event, Invalid), event
    for raw in (encode(event.wire()), event.model_dump_json(exclude_none=True).encode()):
        properties = json.loads(raw)["properties"]
        assert {k: properties[k] for k in unknown} == unknown
        again = parse_event(raw)
        assert not isinstance(again, Invalid)
        assert again.properties.model_extra == unknown


@MORE
@given(data=st.data())
def test_unknown_fields_of_order_items_survive(data: st.DataObject) -> None:
    sent = data.draw(wire_events("order_placed"))
    marker = data.draw(extras(frozenset(ITEM_PROPS), min_size=1))
    sent["properties"]["items"][0].update(marker)
    event = parse_event(encode(sent))
    assert not isinstance(event, Invalid), event
    item = json.loads(event.model_dump_json(exclude_none=True))["properties"]["items"][0]
    assert {k: item[k] for k in marker} == marker


# --- one constraint broken at a time → refused, with the reason and the path -------------

REQUIRED = [(t, name) for t in TYPES for name, prop in PROPS[t].items() if prop.required]
ALL_PROPS = [(t, name) for t in TYPES for name in PROPS[t]]


@pytest.mark.parametrize(("event_type", "name"), REQUIRED)
@FEW
@given(data=st.data())
def test_a_missing_required_property_is_refused(
    event_type: str, name: str, data: st.DataObject
) -> None:
    event = data.draw(lean_events(event_type))
    del event["properties"][name]
    result = assert_rejected(parse_object(event), "schema_violation", f"properties.{name}", event)
    assert [issue.kind for issue in result.errors] == ["missing"]
    assert result.event_id == event["event_id"]
    assert parse_event(encode(event)) == result


@pytest.mark.parametrize(
    "event_type", [t for t in TYPES if not any(p.required for p in PROPS[t].values())]
)
@MORE
@given(data=st.data())
def test_event_types_without_required_properties_accept_none(
    event_type: str, data: st.DataObject
) -> None:
    event = data.draw(lean_events(event_type))
    event.pop("properties", None)
    parsed = parse_object(event)
    assert isinstance(parsed, EVENT_TYPES[event_type]), parsed
    assert parsed.wire()["properties"] == {}


@pytest.mark.parametrize(("event_type", "name"), ALL_PROPS)
@SOME
@given(data=st.data())
def test_a_property_value_out_of_its_bounds_or_type_is_refused(
    event_type: str, name: str, data: st.DataObject
) -> None:
    event = data.draw(lean_events(event_type))
    refused = PROPS[event_type][name].refused()
    event.setdefault("properties", {})[name] = data.draw(refused, label=name)
    assert_rejected(parse_object(event), "schema_violation", f"properties.{name}", event)
    assert_rejected(parse_event(encode(event)), "schema_violation", f"properties.{name}", event)


@pytest.mark.parametrize("name", sorted(ITEM_PROPS))
@MORE
@given(data=st.data())
def test_a_bad_order_item_is_refused_at_its_index(name: str, data: st.DataObject) -> None:
    event = data.draw(lean_events("order_placed"))
    items = event["properties"]["items"]
    index = data.draw(st.integers(0, len(items) - 1), label="index")
    if data.draw(st.booleans(), label="delete"):
        del items[index][name]
    else:
        items[index][name] = data.draw(ITEM_PROPS[name].refused(), label=name)
    path = f"properties.items.{index}.{name}"
    assert_rejected(parse_event(encode(event)), "schema_violation", path, event)


# Envelope mutations: (change the event in place, reason, field path). A mutation may
# return the field path itself when it is only known once drawn.
Mutation = Callable[[st.DataObject, dict[str, Json]], str | None]


def _set(field: str, values: st.SearchStrategy[Any]) -> Mutation:
    def mutate(data: st.DataObject, event: dict[str, Json]) -> None:
        event[field] = data.draw(values, label=field)

    return mutate


def _delete(field: str) -> Mutation:
    def mutate(data: st.DataObject, event: dict[str, Json]) -> None:
        event.pop(field, None)

    return mutate


def _no_identity(data: st.DataObject, event: dict[str, Json]) -> None:
    blank = st.sampled_from(["absent", "null", "empty"])
    for field in ("customer_id", "anonymous_id"):
        how = data.draw(blank, label=field)
        if how == "absent":
            event.pop(field, None)
        else:
            event[field] = None if how == "null" else ""


def _one_bad_id(field: str) -> Mutation:
    other = {"customer_id": "anonymous_id", "anonymous_id": "customer_id"}.get(field)

    def mutate(data: st.DataObject, event: dict[str, Json]) -> None:
        if other is not None and not event.get(other):
            event[other] = data.draw(IDS)  # the identity stays complete
        # "" with no other id would be missing_identity; the other id is present here
        event[field] = data.draw(BAD_IDS, label=field)

    return mutate


_UNKNOWN_KEYS = st.text(min_size=1, max_size=12).filter(lambda k: k not in ENVELOPE_FIELDS)


def _unknown_top_level(data: st.DataObject, event: dict[str, Json]) -> str:
    key = data.draw(_UNKNOWN_KEYS, label="key")
    event[key] = data.draw(JSON_VALUES, label="value")
    return key


_naive = st.datetimes(
    min_value=datetime(1900, 1, 1),  # noqa: DTZ001 - naive on purpose
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
).map(datetime.isoformat)


# Valid in their own zone, but outside datetime's range once converted to UTC.
def _overflow(minutes: int, early: bool) -> str:
    if early:  # 0001-01-01T00:00+hh:mm is still year 0 in UTC
        return datetime(1, 1, 1, tzinfo=timezone(timedelta(minutes=minutes))).isoformat()
    late = datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(minutes=-minutes)))
    return late.isoformat()  # ... and this is year 10000


_overflowing = st.builds(_overflow, st.integers(1, 14 * 60), st.booleans())
_not_timestamps = (
    st.sampled_from(["yesterday", "2026-13-01T00:00:00Z", "2026-02-30T10:00:00+01:00", "", "10:00"])
    | _CONTAINERS
)
_not_uuids = st.text("ghijklmnopqrstuvwxyz-", min_size=1, max_size=36) | _CONTAINERS
_unknown_types = st.text(max_size=20).filter(lambda t: t not in EVENT_TYPES) | st.integers()

ENVELOPE_MUTATIONS: dict[str, tuple[Mutation, str, str]] = {
    "naive occurred_at": (_set("occurred_at", _naive), "schema_violation", "occurred_at"),
    "naive received_at": (_set("received_at", _naive), "schema_violation", "received_at"),
    "occurred_at not a timestamp": (
        _set("occurred_at", _not_timestamps),
        "schema_violation",
        "occurred_at",
    ),
    "occurred_at overflows in UTC": (
        _set("occurred_at", _overflowing),
        "schema_violation",
        "occurred_at",
    ),
    "event_id not a uuid": (_set("event_id", _not_uuids), "schema_violation", "event_id"),
    "no identity": (_no_identity, "missing_identity", "customer_id"),
    "bad customer_id": (_one_bad_id("customer_id"), "schema_violation", "customer_id"),
    "bad anonymous_id": (_one_bad_id("anonymous_id"), "schema_violation", "anonymous_id"),
    "bad session_id": (_one_bad_id("session_id"), "schema_violation", "session_id"),
    "bad channel": (_set("channel", BAD_LABELS), "schema_violation", "channel"),
    "bad touchpoint": (_set("touchpoint", BAD_LABELS), "schema_violation", "touchpoint"),
    "unknown event_type": (
        _set("event_type", _unknown_types),
        "unknown_event_type",
        "event_type",
    ),
    "no event_type": (_delete("event_type"), "unknown_event_type", "event_type"),
    "unknown schema_version": (
        _set("schema_version", st.integers().filter(lambda v: v != 1) | _LETTERS),
        "schema_violation",
        "schema_version",
    ),
    "properties not an object": (
        _set("properties", st.lists(st.integers(), max_size=2) | _LETTERS | st.integers()),
        "schema_violation",
        "properties",
    ),
    "unknown top-level field": (_unknown_top_level, "schema_violation", "<key>"),
    **{f"no {field}": (_delete(field), "schema_violation", field) for field in ENVELOPE_REQUIRED},
}


@pytest.mark.parametrize("mutation", sorted(ENVELOPE_MUTATIONS))
@MORE
@given(data=st.data())
def test_a_broken_envelope_is_refused_with_its_reason_and_field(
    mutation: str, data: st.DataObject
) -> None:
    mutate, reason, field = ENVELOPE_MUTATIONS[mutation]
    event = data.draw(ANY_EVENT, label="event")
    field = mutate(data, event) or field
    result = assert_rejected(parse_event(encode(event)), reason, field, event)
    same = assert_rejected(parse_object(event), reason, field, event)  # the emitter's path
    assert [i.kind for i in same.errors] == [i.kind for i in result.errors]
    if reason == "schema_violation":  # the dead letter still says which event it was
        sent_id = event.get("event_id")
        assert result.event_id == (sent_id if isinstance(sent_id, str) else None)


@MORE
@given(data=st.data())
def test_identify_without_both_ids_is_refused(data: st.DataObject) -> None:
    event = data.draw(lean_events("identify"))
    del event[data.draw(st.sampled_from(["customer_id", "anonymous_id"]))]
    result = parse_event(encode(event))
    assert isinstance(result, Invalid) and result.reason == "schema_violation", result
    # A model-level rule: the issue has no single field, its reason names both.
    assert any(
        "customer_id" in issue.reason and "anonymous_id" in issue.reason for issue in result.errors
    ), result


@SOME
@given(data=st.data())
def test_a_message_over_the_size_limit_is_too_large(data: st.DataObject) -> None:
    event = data.draw(ANY_EVENT)
    limit = data.draw(st.integers(1024, 64 * 1024), label="max_bytes")
    event.setdefault("properties", {})["padding"] = "p" * limit
    raw = encode(event)
    result = parse_event(raw, max_bytes=limit)
    assert isinstance(result, Invalid) and result.reason == "too_large"
    assert [issue.kind for issue in result.errors] == ["size"]
    assert str(len(raw)) in result.describe()


# --- never raises ------------------------------------------------------------------------


def _never_raises(raw: bytes) -> None:
    result = parse_event(raw)
    if isinstance(result, Invalid):
        assert result.errors and all(issue.kind for issue in result.errors), result
        assert result.describe().startswith(result.reason)
    else:
        assert type(result) is EVENT_TYPES[result.event_type]


@MANY
@given(raw=st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _never_raises(raw)


_ENVELOPE_KEYS = st.sampled_from(sorted(ENVELOPE_FIELDS)) | st.text(max_size=6)
_EVENTISH = st.recursive(
    _JSON_LEAVES | st.sampled_from(TYPES) | st.uuids().map(str),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_ENVELOPE_KEYS, inner),
    max_leaves=20,
)


@MANY
@given(value=_EVENTISH)
def test_arbitrary_json_never_raises(value: Json) -> None:
    _never_raises(encode(value))
    result = parse_object(value)
    assert isinstance(result, Invalid) or result.event_type in EVENT_TYPES


@MANY
@given(data=st.data())
def test_a_valid_event_with_any_one_value_replaced_never_raises(data: st.DataObject) -> None:
    event = data.draw(ANY_EVENT, label="event")
    node: Any = event
    while True:  # walk down to a random leaf (or container) and replace it
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys), label="key")
        if isinstance(node[key], dict | list) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        node[key] = data.draw(JSON_VALUES, label="value")
        break
    _never_raises(encode(event))


@SOME
@given(depth=st.integers(1, 20_000), shape=st.sampled_from(["list", "object"]))
def test_deeply_nested_json_never_raises(depth: int, shape: str) -> None:
    opener, closer = ("[", "]") if shape == "list" else ('{"a":', "}")
    raw = (opener * depth + "1" + closer * depth).encode()
    assert isinstance(parse_event(raw), Invalid)  # a list, or an object with no event_type
    _never_raises(raw)
