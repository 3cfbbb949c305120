"""Custobar sales upload: one `Order` → one sale row per line item for `POST /api/sales/upload/`.

Place in the flow: decode → **transform** → ledger → batch → send; the client wraps the rows of
a batch with `request_body(rows)` → `{"sales": [...]}`. An order's rows always travel together.

Mapping choices (Custobar's "Sales upload" doc is the contract; NOTES.md fills gaps):
- Every row: `sale_external_id` = order number; `external_id` = "<order number>-<line number>"
  (1-based, as the doc's "1000-1"), stable across re-sends so a re-upload updates the row;
  `product_id` = the line's variant id, or its product id when it has no variant (the official
  plugins send the products feed's external_id, which is the variant for a variant);
  `product_sku` when the line has a SKU; `quantity` (int); `unit_price` (before discount),
  `discount` (sent even when 0) and `total`, all integer hundredths (see Money); `tags`, the
  order's tags, when it has any: the doc lists `tags` as a sale field AND as a row field ("Tags
  assigned for this Sale-row"), and the key is one key on a row, so every row carries them (a
  tag on the first row only would read as that row's alone).
- Transaction-level fields ride on the first row only, as in the doc's example: `sale_date`
  (`completed_at` in UTC, "2017-12-01T13:11:23Z": always with a zone, which Custobar otherwise
  reads in the account's time zone), the customer identifiers, `sale_shop_id`, `sale_state`,
  `sale_discount`, `sale_shipping`, `sale_total`, `sale_payment_method`, `sale_shipping_method`,
  `sale_coupon_codes`, and the company-specific fields.
- Customer identifiers: customer id → `sale_customer_id`, phone → `sale_phone_number`, email →
  `sale_email`, each when present; an order with none of them is skipped.
- `sale_state`: the documented enum, case-insensitively and with "-"/" " read as "_":
  COMPLETE/COMPLETED → COMPLETE; CANCELLED/CANCELED/RETURNED/REFUNDED → CANCELLED (the field
  list's spelling; the prose's "CANCELED" is not in the enum); ON_HOLD/HOLDED/HOLD → HOLDED;
  PENDING/PENDING_PAYMENT → PENDING_PAYMENT; NEW, PROCESSING, CLOSED as they are. Any other
  state is Invalid. Cancelled orders are sent: the state removes the revenue in Custobar.
- Money: integer hundredths of the currency's unit for EVERY currency ("in cents": 950.00 € →
  95000; ¥1500 → 150000; 1.2345 KWD → 123), not ISO 4217 minor units: the doc's conversion
  `unit_price_in_currency / sale_exchange_rate` = the price in the default currency holds for
  any pair only when both sides count hundredths, and the official plugins send `round(x*100)`
  for every currency. Each field is rounded ROUND_HALF_UP once, from the exact Decimal.
- `sale_total` = sum(row `total`s) - `sale_discount` + `sale_shipping`, computed from the
  rounded integers, so it is exact in what we send. The doc's fallback when `sale_total` is
  absent is sum(row totals) - `sale_discount`, without shipping; we add the shipping on purpose:
  the official plugins do, so the figure is what the customer paid (the order's own total, up
  to the rounding of each part) and revenue reads the same as in plugin-fed accounts, while
  `sale_shipping` still tells the shipping apart.
- Another currency than `default_currency` (compared case-insensitively; the default currency is
  assumed to be the shop's base currency that `exchange_rate` refers to): needs a positive
  `exchange_rate` (Invalid otherwise). Then `sale_currency` and `sale_exchange_rate` are sent
  together (the field list's name; the prose's "sale_exchange_rage" is a typo), each row gets
  `unit_price_in_currency` and the first row `sale_shipping_in_currency` (hundredths of the sale
  currency), and `unit_price`, `discount`, `total`, `sale_discount`, `sale_shipping` (and hence
  `sale_total`) are in the default currency by the doc's formula, price / `sale_exchange_rate`,
  divided at full precision and rounded once per field. In the default currency the rate is
  ignored and no currency fields are sent.
- `sale_exchange_rate` is a JSON number: `float(Decimal rate)`, made here at the JSON boundary,
  the only float in any payload and never used for money (every money field is computed from
  the Decimal rate). The float is the double nearest the rate and serialises to its shortest
  round-trip text, so a rate of up to 15 significant digits appears exactly ("1.112").
- Company-specific fields: each `custom_fields` entry → "<COMPANY>__<key>" (company short name
  upper-cased); a key that is not [A-Za-z0-9_]+ is dropped with a note naming the key.
  `company_prefix` raises ValueError for a company name that cannot form such a field:
  a configuration error, not an order's, so the config should call it at start.
- An order without lines, or a line without a product id, is Invalid (`product_id` is
  mandatory). Text is sent without surrounding whitespace; blank counts as absent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from types import MappingProxyType

from consumer.model import (
    JSON,
    Customer,
    Invalid,
    Order,
    OrderLine,
    Payload,
    Skip,
    TransformResult,
)
from consumer.transform import money
from consumer.transform._common import iso_utc, normalise_state, text, utc

SALE_STATES: Mapping[str, str] = MappingProxyType(
    {
        "COMPLETE": "COMPLETE",
        "COMPLETED": "COMPLETE",
        "CANCELLED": "CANCELLED",
        "CANCELED": "CANCELLED",
        "RETURNED": "CANCELLED",
        "REFUNDED": "CANCELLED",
        "ON_HOLD": "HOLDED",
        "HOLDED": "HOLDED",
        "HOLD": "HOLDED",
        "NEW": "NEW",
        "PENDING": "PENDING_PAYMENT",
        "PENDING_PAYMENT": "PENDING_PAYMENT",
        "PROCESSING": "PROCESSING",
        "CLOSED": "CLOSED",
    }
)
"""Platform state (normalised: upper case, "_" for "-" and spaces) → Custobar `sale_state`."""

_FIELD_KEY = re.compile(r"[A-Za-z0-9_]+")


def rows(order: Order, *, default_currency: str, company: str) -> TransformResult:
    """The order as Custobar sale rows (one per line item), or why it is not sent."""
    prefix = company_prefix(company)
    identifiers = customer_identifiers(order.customer)
    if not identifiers:
        return Skip("no customer identifier (customer id, phone or email)")
    state = sale_state(order.state)
    if state is None:
        return Invalid(f"order state {order.state!r} has no Custobar sale_state")
    completed_at = utc(order.completed_at)
    if completed_at is None:
        return Invalid("completed_at has no time zone")
    if not order.lines:
        return Invalid("order has no lines: Custobar sales are made of rows")
    for number, line in enumerate(order.lines, start=1):
        if text(line.product_id) is None:
            return Invalid(f"line {number} has no product_id")
    rate = order.exchange_rate
    if order.currency.strip().upper() == default_currency.strip().upper():
        rate = None  # the sale is in the default currency: nothing to convert
    elif rate is None or not rate.is_finite() or rate <= 0:
        return Invalid(
            f"sale in {order.currency}, not the default {default_currency}:"
            " needs a positive exchange_rate"
        )

    def base(amount: Decimal) -> int:
        """Hundredths of the default currency, converted at full precision, rounded once."""
        if rate is None:
            return money.hundredths(amount)
        return money.hundredths(money.convert(amount, rate))

    tags = _texts(order.tags)
    lines = [_row(order, number, line, base) for number, line in enumerate(order.lines, 1)]
    for row, line in zip(lines, order.lines, strict=True):
        if rate is not None:
            row["unit_price_in_currency"] = money.hundredths(line.unit_price)
        if tags:
            row["tags"] = list(tags)
    sale = {
        "sale_external_id": order.order_number,
        **identifiers,
        "sale_date": iso_utc(completed_at),
        "sale_shop_id": text(order.shop_id),
        "sale_state": state,
        **_money_fields(order, rate, base, row_totals=[row["total"] for row in lines]),
        "sale_payment_method": text(order.payment_method),
        "sale_shipping_method": text(order.shipping_method),
        "sale_coupon_codes": _texts(order.coupon_codes) or None,
    }
    fields, notes = _company_fields(order.custom_fields, prefix)
    lines[0] = {**_present(sale), **lines[0], **fields}
    return Payload(items=tuple(lines), notes=tuple(notes))


def request_body(rows: Sequence[JSON]) -> JSON:
    """The request body for a batch of rows made by `rows`."""
    return {"sales": list(rows)}


def sale_state(state: str) -> str | None:
    """The documented `sale_state` for a platform state, or None when there is none."""
    return SALE_STATES.get(normalise_state(state))


def customer_identifiers(customer: Customer) -> dict[str, JSON]:
    """The customer's identifying fields, named as sale fields; empty when there are none."""
    return _present(
        {
            "sale_customer_id": text(customer.id),
            "sale_phone_number": text(customer.phone),
            "sale_email": text(customer.email),
        }
    )


@functools.lru_cache(maxsize=16)  # one company per deployment: checked once, not per order
def company_prefix(company: str) -> str:
    """The company short name as a field prefix ("acme" → "ACME__"); ValueError if unusable."""
    name = company.strip().upper()
    if _FIELD_KEY.fullmatch(name) is None:
        raise ValueError(f"Custobar company short name {company!r} is not [A-Za-z0-9_]+")
    return f"{name}__"


def _row(
    order: Order, number: int, line: OrderLine, base: Callable[[Decimal], int]
) -> dict[str, JSON]:
    row: dict[str, JSON] = {
        "sale_external_id": order.order_number,
        "external_id": f"{order.order_number}-{number}",
        "product_id": text(line.variant_id) or text(line.product_id),
    }
    sku = text(line.sku)
    if sku is not None:
        row["product_sku"] = sku
    row |= {
        "quantity": line.quantity,
        "unit_price": base(line.unit_price),
        "discount": base(line.discount),
        "total": base(line.total),
    }
    return row


def _money_fields(
    order: Order, rate: Decimal | None, base: Callable[[Decimal], int], row_totals: list[int]
) -> dict[str, JSON]:
    """Transaction money; `sale_total` = rows - discount + shipping, from the rounded parts."""
    discount, shipping = base(order.discount), base(order.shipping)
    fields: dict[str, JSON] = {}
    if rate is not None:
        fields["sale_currency"] = order.currency
        fields["sale_exchange_rate"] = float(rate)  # JSON number; never used for money
    fields |= {"sale_discount": discount, "sale_shipping": shipping}
    if rate is not None:
        fields["sale_shipping_in_currency"] = money.hundredths(order.shipping)
    fields["sale_total"] = sum(row_totals) - discount + shipping
    return fields


def _company_fields(
    custom_fields: Mapping[str, str], prefix: str
) -> tuple[dict[str, JSON], list[str]]:
    fields: dict[str, JSON] = {}
    notes: list[str] = []
    for key, value in sorted(custom_fields.items()):
        if _FIELD_KEY.fullmatch(key) is None:
            notes.append(f"custom field {key!r} dropped: key is not [A-Za-z0-9_]+")
            continue
        fields[prefix + key] = value
    return fields, notes


def _texts(values: Sequence[str]) -> list[str]:
    """Non-blank values, stripped, first occurrence kept (both fields are sets)."""
    seen: dict[str, None] = {}
    for value in values:
        stripped = text(value)
        if stripped is not None:
            seen.setdefault(stripped)
    return list(seen)


def _present(fields: dict[str, JSON]) -> dict[str, JSON]:
    return {key: value for key, value in fields.items() if value is not None}
