"""What an event is: the envelope of PRODUCT.md and typed properties per event type.

Evolution rule (see README, "Schemas"): inside a schema_version only additive,
optional changes; anything else is a new model with the next schema_version,
and old versions keep parsing.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Self, TypeAlias

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

from touchstream.schemas.currencies import ISO_4217

Id = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
Text = Annotated[str, StringConstraints(max_length=8192)]
Money = Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]


class _Props(BaseModel):
    """Properties: typed where the KPIs need them; unknown extra properties are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)


def _currency(value: str) -> str:
    code = value.upper()
    if code not in ISO_4217:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code")
    return code


class _Priced(_Props):
    currency: str

    @field_validator("currency")
    @classmethod
    def _iso(cls, value: str) -> str:
        return _currency(value)


class PageViewProps(_Props):
    url: Text | None = None
    referrer: Text | None = None


class ProductViewProps(_Props):
    sku: Id
    category: Id | None = None


class SearchProps(_Props):
    query: Text
    results: int | None = Field(default=None, ge=0)


class CartLineProps(_Priced):
    cart_id: Id
    sku: Id
    category: Id
    quantity: int = Field(strict=True, ge=1, le=10_000)
    price: Money


class CheckoutStartedProps(_Priced):
    checkout_id: Id
    cart_id: Id
    value: Money


class CheckoutStepProps(_Props):
    checkout_id: Id
    step: Label


class PaymentFailedProps(_Props):
    checkout_id: Id
    reason: Text


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    sku: Id
    category: Id
    quantity: int = Field(strict=True, ge=1, le=10_000)
    price: Money


class OrderPlacedProps(_Priced):
    order_id: Id
    checkout_id: Id | None = None
    total: Money
    items: list[OrderItem] = Field(min_length=1, max_length=1000)


class OrderUpdateProps(_Props):
    order_id: Id
    reason: Text | None = None


class SubscriptionProps(_Props):
    subscription_id: Id
    plan: Id


class NpsProps(_Props):
    score: int = Field(strict=True, ge=0, le=10)
    order_id: Id | None = None
    comment: Text | None = None


class CsatProps(_Props):
    score: int = Field(strict=True, ge=1, le=5)
    order_id: Id | None = None
    comment: Text | None = None


class CesProps(_Props):
    score: int = Field(strict=True, ge=1, le=7)
    order_id: Id | None = None
    comment: Text | None = None


class IsnProps(_Props):
    attribute: Label
    score: int = Field(strict=True, ge=1, le=5)


class CommentProps(_Props):
    text: Text = Field(min_length=1)
    sentiment: Literal["positive", "neutral", "negative"] | None = None
    score: int | None = Field(
        strict=True, default=None, ge=1, le=5, description="1-5, used when no label"
    )


class SupportContactProps(_Props):
    reason: Text
    resolved: bool


class CaseClosedProps(_Props):
    alert_id: Id
    resolution: Text


class IdentifyProps(_Props):
    pass


class _Envelope(BaseModel):
    """The envelope every event shares. Unknown top-level fields are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: uuid.UUID
    event_type: str
    schema_version: Literal[1] = 1
    occurred_at: AwareDatetime
    received_at: AwareDatetime | None = None
    customer_id: Id | None = None
    anonymous_id: Id | None = None
    session_id: Id | None = None
    channel: Label
    touchpoint: Label

    @field_validator("occurred_at", "received_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            raise ValueError("timestamp is out of range once converted to UTC") from exc

    @model_validator(mode="after")
    def _identity(self) -> _Envelope:
        if self.customer_id is None and self.anonymous_id is None:
            raise ValueError("at least one of customer_id or anonymous_id is required")
        return self

    @property
    def identity(self) -> str:
        """The Kafka key: customer_id, else anonymous_id."""
        return self.customer_id or self.anonymous_id or ""

    @functools.cached_property
    def at(self) -> float:
        """``occurred_at`` in epoch seconds, computed once per event: the stages read
        it ~5 times an event, and ``datetime.timestamp()`` costs ~1 µs. Not a field
        (not validated, dumped or compared); :meth:`model_copy` drops it."""
        return self.occurred_at.timestamp()

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("at", None)  # occurred_at may be what changed
        return copied

    def wire(self) -> dict[str, Any]:
        """The JSON-ready wire form (PRODUCT.md: one object, ISO 8601 timestamps)."""
        return self.model_dump(mode="json", exclude_none=True)


class PageView(_Envelope):
    event_type: Literal["page_view"]
    properties: PageViewProps = PageViewProps()


class ProductView(_Envelope):
    event_type: Literal["product_view"]
    properties: ProductViewProps


class Search(_Envelope):
    event_type: Literal["search"]
    properties: SearchProps


class AddToCart(_Envelope):
    event_type: Literal["add_to_cart"]
    properties: CartLineProps


class RemoveFromCart(_Envelope):
    event_type: Literal["remove_from_cart"]
    properties: CartLineProps


class CheckoutStarted(_Envelope):
    event_type: Literal["checkout_started"]
    properties: CheckoutStartedProps


class CheckoutStep(_Envelope):
    event_type: Literal["checkout_step"]
    properties: CheckoutStepProps


class PaymentFailed(_Envelope):
    event_type: Literal["payment_failed"]
    properties: PaymentFailedProps


class OrderPlaced(_Envelope):
    event_type: Literal["order_placed"]
    properties: OrderPlacedProps


class OrderCancelled(_Envelope):
    event_type: Literal["order_cancelled"]
    properties: OrderUpdateProps


class OrderReturned(_Envelope):
    event_type: Literal["order_returned"]
    properties: OrderUpdateProps


class OrderDelivered(_Envelope):
    event_type: Literal["order_delivered"]
    properties: OrderUpdateProps


class SubscriptionStarted(_Envelope):
    event_type: Literal["subscription_started"]
    properties: SubscriptionProps


class SubscriptionCancelled(_Envelope):
    event_type: Literal["subscription_cancelled"]
    properties: SubscriptionProps


class CancellationRetained(_Envelope):
    event_type: Literal["cancellation_retained"]
    properties: SubscriptionProps


class PlanUpgraded(_Envelope):
    event_type: Literal["plan_upgraded"]
    properties: SubscriptionProps


class SupportContact(_Envelope):
    event_type: Literal["support_contact"]
    properties: SupportContactProps


class Identify(_Envelope):
    event_type: Literal["identify"]
    properties: IdentifyProps = IdentifyProps()

    @model_validator(mode="after")
    def _links(self) -> Identify:
        if not (self.customer_id and self.anonymous_id):
            raise ValueError("identify needs both customer_id and anonymous_id")
        return self


class NpsResponse(_Envelope):
    event_type: Literal["nps_response"]
    properties: NpsProps


class CsatResponse(_Envelope):
    event_type: Literal["csat_response"]
    properties: CsatProps


class CesResponse(_Envelope):
    event_type: Literal["ces_response"]
    properties: CesProps


class IsnResponse(_Envelope):
    event_type: Literal["isn_response"]
    properties: IsnProps


class Comment(_Envelope):
    event_type: Literal["comment"]
    properties: CommentProps


class CaseClosed(_Envelope):
    event_type: Literal["case_closed"]
    properties: CaseClosedProps


EVENT_MODELS: tuple[type[_Envelope], ...] = (
    PageView,
    ProductView,
    Search,
    AddToCart,
    RemoveFromCart,
    CheckoutStarted,
    CheckoutStep,
    PaymentFailed,
    OrderPlaced,
    OrderCancelled,
    OrderReturned,
    OrderDelivered,
    SubscriptionStarted,
    SubscriptionCancelled,
    CancellationRetained,
    PlanUpgraded,
    SupportContact,
    Identify,
    NpsResponse,
    CsatResponse,
    CesResponse,
    IsnResponse,
    Comment,
    CaseClosed,
)

AnyEvent: TypeAlias = Annotated[  # noqa: UP040 - pydantic needs the plain alias here
    PageView
    | ProductView
    | Search
    | AddToCart
    | RemoveFromCart
    | CheckoutStarted
    | CheckoutStep
    | PaymentFailed
    | OrderPlaced
    | OrderCancelled
    | OrderReturned
    | OrderDelivered
    | SubscriptionStarted
    | SubscriptionCancelled
    | CancellationRetained
    | PlanUpgraded
    | SupportContact
    | Identify
    | NpsResponse
    | CsatResponse
    | CesResponse
    | IsnResponse
    | Comment
    | CaseClosed,
    Field(discriminator="event_type"),
]
Event = _Envelope
EVENT_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)
EVENT_TYPES: dict[str, type[_Envelope]] = {
    model.model_fields["event_type"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in EVENT_MODELS
}


def event_types(*models: type[_Envelope]) -> frozenset[str]:
    """The ``event_type`` names of these models. The hot path checks an event's
    name against such a set before narrowing with ``isinstance``: pydantic's
    metaclass runs its ``__instancecheck__`` in Python, ~0.25 µs a miss, and the
    stages made ~22 of them per event."""
    return frozenset(name for name, model in EVENT_TYPES.items() if model in models)


# Which raw topic (a field of Settings.topics) carries which event type.
ORDER_TYPES = frozenset(
    {
        "order_placed",
        "order_cancelled",
        "order_returned",
        "order_delivered",
        "subscription_started",
        "subscription_cancelled",
        "cancellation_retained",
        "plan_upgraded",
    }
)
FEEDBACK_TYPES = frozenset(
    {
        "nps_response",
        "csat_response",
        "ces_response",
        "isn_response",
        "comment",
        "support_contact",
        "case_closed",
    }
)


def family(event_type: str) -> str:
    """'clickstream', 'orders' or 'feedback': the raw topic an event type goes to."""
    if event_type in ORDER_TYPES:
        return "orders"
    if event_type in FEEDBACK_TYPES:
        return "feedback"
    return "clickstream"


def utcnow() -> datetime:
    return datetime.now(UTC)
