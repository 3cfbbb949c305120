"""Builders for domain values: `make_order`/`make_line` with realistic defaults, and hypothesis
strategies (`orders()`, `lines()`, ...) for property tests.

Money is always consistent, as the decoder enforces it: a line's total is
`unit_price * quantity - discount`, an order's total is `sum(line totals) - discount + shipping`.
Pass `total=` explicitly to build an inconsistent value on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from hypothesis import strategies as st

from consumer.model import Address, Customer, Order, OrderLine
from consumer.transform.money import minor_unit_exponent

COMPLETED_AT = datetime(2023, 4, 21, 14, 30, tzinfo=UTC)
"""The default completion time (the Nibble doc's example)."""


def make_line(**overrides: Any) -> OrderLine:
    """One order line: a single "LCD Display (Upgrade)" at 49.90 unless overridden."""
    fields: dict[str, Any] = {
        "product_id": "786",
        "variant_id": "786-M",
        "sku": "SKU-786",
        "name": "LCD Display (Upgrade)",
        "variant_name": "M",
        "url": "https://shop.example/p/786",
        "image_url": "https://shop.example/img/786.png",
        "quantity": 1,
        "unit_price": Decimal("49.90"),
        "discount": Decimal("0.00"),
    }
    fields.update(overrides)
    fields.setdefault("total", fields["unit_price"] * fields["quantity"] - fields["discount"])
    return OrderLine(**fields)


def make_customer(**overrides: Any) -> Customer:
    """A customer with every field set (Leon Gomes, the Nudgify doc's example)."""
    fields: dict[str, Any] = {
        "id": "A501",
        "email": "leon.gomes@example.com",
        "phone": "+358401234567",
        "first_name": "Leon",
        "last_name": "Gomes",
        "ip": "92.21.8.106",
    }
    return Customer(**(fields | overrides))


def make_order(**overrides: Any) -> Order:
    """A completed EUR order of one line with a known customer, unless overridden.

    `lines` may be any sequence; `total` is computed from the lines, discount and shipping
    unless given.
    """
    fields: dict[str, Any] = {
        "order_number": "1000",
        "order_id": None,
        "completed_at": COMPLETED_AT,
        "currency": "EUR",
        "exchange_rate": None,
        "customer": make_customer(),
        "address": Address(city="Los Angeles", state="California", country="US"),
        "lines": (make_line(),),
        "discount": Decimal("0.00"),
        "shipping": Decimal("0.00"),
        "state": "COMPLETE",
        "coupon_codes": (),
        "shop_id": "web",
        "payment_method": "card",
        "shipping_method": "post",
        "nibble_session_token": "sess-0001",
        "cart_nibble_id": None,
        "tags": (),
        "custom_fields": {},
    }
    fields.update(overrides)
    fields["lines"] = tuple(fields["lines"])
    line_sum = sum((line.total for line in fields["lines"]), Decimal(0))
    fields.setdefault("total", line_sum - fields["discount"] + fields["shipping"])
    return Order(**fields)


# --- hypothesis strategies -------------------------------------------------------------------

CURRENCIES = ("EUR", "USD", "GBP", "SEK", "JPY", "KRW", "KWD", "BHD")
"""Two-decimal, zero-decimal (JPY, KRW) and three-decimal (KWD, BHD) currencies."""

STATES = ("COMPLETE", "complete", "COMPLETED", "CANCELLED", "CANCELED", "canceled", "RETURNED",
          "REFUNDED", "ON-HOLD", "on_hold", "HOLDED", "NEW", "PENDING", "PENDING_PAYMENT",
          "Pending Payment", "PROCESSING", "CLOSED")  # fmt: skip
"""Order states as platforms spell them; every one has a documented Custobar sale_state."""

SCALE = Decimal("0.0001")  # the Avro schema's decimal scale for money

_NAMES = st.text(min_size=1, max_size=20)
_IDS = st.from_regex(r"[A-Z]{1,3}[0-9]{1,8}", fullmatch=True)


def amounts(currency: str, *, max_minor: int = 10**7) -> st.SearchStrategy[Decimal]:
    """Non-negative amounts: usually whole minor units, sometimes using the Avro scale of 4."""
    step = Decimal(1).scaleb(-minor_unit_exponent(currency))
    whole = st.integers(0, max_minor).map(lambda n: n * step)
    fine = st.integers(0, max_minor * 10**4).map(lambda n: (n * SCALE * step).quantize(SCALE))
    return st.one_of(whole, whole, fine)


def exchange_rates() -> st.SearchStrategy[Decimal]:
    """Positive rates with the Avro scale of 10, from 0.001 to 20000."""
    return st.integers(10**7, 2 * 10**14).map(lambda n: n * Decimal("1E-10"))


def order_numbers() -> st.SearchStrategy[str]:
    """Plain digits (with leading zeros, beyond 64 bits), shop prefixes, arbitrary text."""
    text = st.text(min_size=1, max_size=24).map(str.strip).filter(bool)
    return st.one_of(
        st.integers(0, 10**12).map(str),
        st.from_regex(r"0[0-9]{1,8}", fullmatch=True),
        st.integers(2**63 - 2, 10**25).map(str),
        st.integers(1, 10**6).map(lambda n: f"SO-{n}"),
        text,
    )


def _shares(whole: Decimal) -> st.SearchStrategy[Decimal]:
    """Usually nothing, else a percentage of `whole` (up to all of it) at the Avro scale."""
    percent = st.integers(0, 100).map(lambda p: (whole * p / 100).quantize(SCALE, ROUND_DOWN))
    return st.one_of(st.just(Decimal(0)), st.just(Decimal(0)), percent)


@st.composite
def lines(draw: st.DrawFn, currency: str = "EUR", *, nibble: bool = True) -> OrderLine:
    """One consistent line; with `nibble`, sometimes negotiated or a (negotiated) addon."""
    quantity = draw(st.integers(1, 20))
    unit_price = draw(amounts(currency))
    discount = draw(_shares(unit_price * quantity))
    nibble_id = draw(st.none() | _IDS.map("NB{}".format)) if nibble else None
    return make_line(
        product_id=draw(_IDS),
        variant_id=draw(st.none() | _IDS),
        sku=draw(st.none() | _IDS.map("SKU-{}".format)),
        name=draw(_NAMES),
        url=draw(st.none() | st.just("https://shop.example/p/1")),
        image_url=draw(st.none() | st.just("https://shop.example/img/1.png")),
        quantity=quantity,
        unit_price=unit_price,
        discount=discount,
        nibble_id=nibble_id,
        is_nibble_addon=nibble_id is not None and draw(st.booleans()),
    )


def customers() -> st.SearchStrategy[Customer]:
    """Any mix of present and absent fields; emails valid or not, forwarded IP lists."""
    emails = st.one_of(
        st.none(),
        st.emails(),
        st.sampled_from(("", "  ", "no-at-sign", "a@b", "name@domain", "x y@example.com")),
    )
    ips = st.one_of(
        st.none(),
        st.ip_addresses().map(str),
        st.tuples(st.ip_addresses(), st.ip_addresses()).map(lambda p: f"{p[0]}, {p[1]}"),
        st.sampled_from(("unknown", "", " , 10.0.0.1")),
    )
    return st.builds(
        Customer,
        id=st.none() | _IDS,
        email=emails,
        phone=st.none() | st.from_regex(r"\+[0-9]{8,14}", fullmatch=True),
        first_name=st.none() | _NAMES,
        last_name=st.none() | _NAMES,
        ip=ips,
    )


def addresses() -> st.SearchStrategy[Address]:
    """Cities and states as text; countries valid, lower-case or not a code at all."""
    countries = st.one_of(
        st.none(),
        st.from_regex(r"[A-Z]{2}", fullmatch=True),
        st.sampled_from(("us", "Gb", "USA", "1A", "", "Ü1", "United States")),
    )
    return st.builds(Address, city=st.none() | _NAMES, state=st.none() | _NAMES, country=countries)


@st.composite
def orders(
    draw: st.DrawFn,
    *,
    base_currency: str = "EUR",
    currencies: Sequence[str] = CURRENCIES,
    states: Sequence[str] = STATES,
    min_lines: int = 1,
    max_lines: int = 60,
) -> Order:
    """Consistent orders: a sale in another currency than `base_currency` has an exchange rate."""
    currency = draw(st.sampled_from(currencies))
    order_lines = draw(st.lists(lines(currency), min_size=min_lines, max_size=max_lines))
    line_sum = sum((line.total for line in order_lines), Decimal(0))
    discount = draw(_shares(line_sum))
    millis = draw(st.integers(946_684_800_000, 4_102_444_800_000))  # 2000 to 2100
    return make_order(
        order_number=draw(order_numbers()),
        order_id=draw(st.none() | st.integers(1, 2**63 - 1)),
        completed_at=datetime.fromtimestamp(millis / 1000, UTC),
        currency=currency,
        exchange_rate=None if currency == base_currency else draw(exchange_rates()),
        customer=draw(customers()),
        address=draw(addresses()),
        lines=order_lines,
        discount=discount,
        shipping=draw(st.just(Decimal(0)) | amounts(currency, max_minor=10**5)),
        state=draw(st.sampled_from(states)),
        coupon_codes=tuple(draw(st.lists(_IDS, max_size=3))),
        shop_id=draw(st.none() | st.sampled_from(("web", "app", "1"))),
        payment_method=draw(st.none() | st.sampled_from(("card", "paypal", "Credit Card"))),
        shipping_method=draw(st.none() | st.sampled_from(("post", "courier"))),
        nibble_session_token=draw(st.none() | st.uuids().map(str)),
        cart_nibble_id=draw(st.none() | _IDS.map("NBC{}".format)),
        tags=tuple(draw(st.lists(st.sampled_from(("demo", "vip", "b2b")), max_size=3))),
        custom_fields=draw(
            st.dictionaries(
                st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True) | st.text(max_size=8),
                st.text(max_size=20),
                max_size=3,
            )
        ),
    )
