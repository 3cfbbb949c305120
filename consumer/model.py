"""Domain values shared by every stage: the decoded order and what a transform can say about it.

Nothing here does I/O. Money is `Decimal` from the Avro decimal type to the vendor boundary;
times are aware UTC datetimes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeAlias

JSON: TypeAlias = Any
"""A JSON-serialisable value (dict/list/str/int/bool/None); vendor payloads are built from these."""


@dataclass(frozen=True, slots=True)
class Customer:
    id: str | None = None
    email: str | None = None
    phone: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    ip: str | None = None


@dataclass(frozen=True, slots=True)
class Address:
    city: str | None = None
    state: str | None = None
    country: str | None = None


@dataclass(frozen=True, slots=True)
class OrderLine:
    product_id: str
    name: str
    quantity: int
    unit_price: Decimal
    discount: Decimal
    total: Decimal
    variant_id: str | None = None
    sku: str | None = None
    variant_name: str | None = None
    url: str | None = None
    image_url: str | None = None
    nibble_id: str | None = None
    is_nibble_addon: bool = False


@dataclass(frozen=True, slots=True)
class Order:
    order_number: str
    completed_at: datetime
    currency: str
    lines: tuple[OrderLine, ...]
    discount: Decimal
    shipping: Decimal
    total: Decimal
    state: str
    customer: Customer = field(default_factory=Customer)
    address: Address = field(default_factory=Address)
    order_id: int | None = None
    exchange_rate: Decimal | None = None
    coupon_codes: tuple[str, ...] = ()
    shop_id: str | None = None
    payment_method: str | None = None
    shipping_method: str | None = None
    nibble_session_token: str | None = None
    cart_nibble_id: str | None = None
    tags: tuple[str, ...] = ()
    custom_fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def items_total(self) -> Decimal:
        """All lines after line discounts and the order discount: what the goods cost."""
        return sum((line.total for line in self.lines), Decimal(0)) - self.discount

    def personal_values(self) -> tuple[str, ...]:
        """The personal values this order carries, for scrubbing them from texts about it (a
        vendor's error message may quote them): e-mail, phone, names, customer id, IP (and each
        address of a forwarded list), city, state and the Nibble session token; blanks left out.
        """
        c, a = self.customer, self.address
        found = [c.email, c.phone, c.first_name, c.last_name, c.id, c.ip, a.city, a.state,
                 self.nibble_session_token]  # fmt: skip
        if c.ip and "," in c.ip:
            found += c.ip.split(",")
        return tuple(dict.fromkeys(v.strip() for v in found if v and v.strip()))


@dataclass(frozen=True, slots=True)
class Payload:
    """What one order contributes to a vendor request: the entries of the batch array.

    Nibble and Nudgify take one entry per order; Custobar one row per line item.
    `notes` are adjustments the transform made so the order could still be sent
    (e.g. an invalid country dropped); the pipeline logs them.
    """

    items: tuple[JSON, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Skip:
    """This order is deliberately not sent to this destination (a rule, not an error)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """The order cannot satisfy this vendor's contract: dead-letter it for this destination."""

    reason: str


TransformResult: TypeAlias = Payload | Skip | Invalid
