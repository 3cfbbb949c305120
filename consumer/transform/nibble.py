"""Nibble report-sale: one `Order` → one sale object for `POST /v1/sales` (`{"sales": [...]}`).

Place in the flow: decode → **transform** → ledger → batch (≤ 50 sales, the client's job) → send.

Mapping choices (Nibble's "Report Sale" doc is the contract; NOTES.md fills gaps):
- Sent: every completed sale when `report_all_sales` (Nibble's A/B testing needs them all);
  otherwise only negotiated sales (a `cart_nibble_id` or any line `nibble_id`), others skipped.
- Skipped: cancelled, canceled, returned, refunded or closed orders; Nibble has no cancel
  endpoint and wants completed sales only.
- `session_token` is required: an order without one is skipped, unless it carries a Nibble id;
  then it is Invalid (a negotiated sale we are obliged to report but cannot).
- `purchase_date_time`: `completed_at` in UTC to the second, "2023-04-21T14:30:00Z" (the doc's
  example omits seconds; both are ISO 8601). A naive timestamp is Invalid, never guessed.
- `total_item_price`: `Order.items_total` (line totals after line discounts, minus the order
  discount; no shipping) as a decimal string in the currency's precision, ROUND_HALF_UP
  ("10.50", JPY "1500"). A negative item total is Invalid.
- `currency_code`: the order's currency; `order_number` as is.
- `nibble_id` (sale level): the cart negotiation id, and the key is left out when there is none.
- `items`: every line, negotiated or not, in order: `product_id`; `variant_id` (the doc's table
  prints that row as "product_id", a typo; the example shows `variant_id`), left out when None;
  `quantity` always (int); `nibble_id` when present; `isNibbleAddonItem` always (true only for
  addon lines). An addon line without a `nibble_id` is Invalid: the doc requires the id on both
  the negotiated item and its addon.
- An order without lines, or a line without a `product_id`, is Invalid (both are required).
- Ids and the token are sent without surrounding whitespace; blank counts as absent.
"""

from __future__ import annotations

from decimal import Decimal

from consumer.model import JSON, Invalid, Order, OrderLine, Payload, Skip, TransformResult
from consumer.transform import money
from consumer.transform._common import is_ended, iso_utc, text, utc


def sale(order: Order, *, report_all_sales: bool) -> TransformResult:
    """The order as one Nibble sale object, or why it is not sent."""
    if is_ended(order.state):
        return Skip(f"order state {order.state!r}: Nibble takes completed sales only")
    negotiated = text(order.cart_nibble_id) is not None or any(
        text(line.nibble_id) is not None for line in order.lines
    )
    if not negotiated and not report_all_sales:
        return Skip("not a Nibble-negotiated sale (reporting negotiated sales only)")
    session_token = text(order.nibble_session_token)
    if session_token is None:
        if negotiated:
            return Invalid("Nibble-negotiated sale has no Nibble session token")
        return Skip("no Nibble session token")
    completed_at = utc(order.completed_at)
    if completed_at is None:
        return Invalid("completed_at has no time zone")
    if not order.lines:
        return Invalid("order has no lines: Nibble requires the sale's items")
    for number, line in enumerate(order.lines, start=1):
        if text(line.product_id) is None:
            return Invalid(f"line {number} has no product_id")
        if line.is_nibble_addon and text(line.nibble_id) is None:
            return Invalid(f"line {number} is a Nibble addon item without a nibble_id")
    if order.items_total < Decimal(0):
        return Invalid(f"item total {order.items_total} is negative")
    body: dict[str, JSON] = {
        "purchase_date_time": iso_utc(completed_at),
        "session_token": session_token,
        "order_number": order.order_number,
        "currency_code": order.currency,
        "total_item_price": money.decimal_string(order.items_total, order.currency),
    }
    cart_nibble_id = text(order.cart_nibble_id)
    if cart_nibble_id is not None:
        body["nibble_id"] = cart_nibble_id
    body["items"] = [_item(line) for line in order.lines]
    return Payload(items=(body,))


def _item(line: OrderLine) -> dict[str, JSON]:
    item: dict[str, JSON] = {"product_id": text(line.product_id)}
    variant_id = text(line.variant_id)
    if variant_id is not None:
        item["variant_id"] = variant_id
    item["quantity"] = line.quantity
    nibble_id = text(line.nibble_id)
    if nibble_id is not None:
        item["nibble_id"] = nibble_id
    item["isNibbleAddonItem"] = line.is_nibble_addon
    return item
