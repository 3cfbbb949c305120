"""Nudgify purchases: one `Order` → one order object for `POST /api/purchases`.

Place in the flow: decode → **transform** → ledger → batch → send; the client wraps a batch with
`request_body(site_key, orders)` → `{"site_key": ..., "orders": [...]}`.

Mapping choices (Nudgify's "Purchases" doc is the contract; NOTES.md fills gaps):
- Skipped: cancelled, canceled, returned, refunded or closed orders. Purchase Nudges are social
  proof of completed purchases and Nudgify has no cancel endpoint.
- `order_id` (an integer), always in [1, 2**53 - 1] (JavaScript's `Number.MAX_SAFE_INTEGER`):
  `Order.order_id` (the platform's internal id, as the official plugin sends) when it is in that
  range; else the order number when it is plain ASCII digits without a leading zero and in that
  range; else a derived id: the first 8 bytes of
  SHA-256(b"order-consumer/nudgify/order_id/v1\\x00" + order number in UTF-8), big-endian, kept
  to 52 bits and offset by 2**52, i.e. in [2**52, 2**53). Derived ids are stable for an order
  number, safe as JavaScript numbers, and above any realistic platform id. Leading zeros go to
  the derivation so "0123" and "123" never share an id.
  Why the range: ids above 2**53 - 1 reach Nudgify's dashboard and widgets (JavaScript) and any
  JSON reader that uses doubles rounded to a neighbour, so two orders could merge into one
  nudge or an id could change between sends. 0 and negatives pass Laravel's `integer` rule but
  are falsy or not ids in PHP/JS code, so they are not trusted either. Such an id is treated as
  absent (derived from the order number), never refused: deriving keeps the order visible with a
  stable, unique id, while dead-lettering would lose the social proof for a detail of ours.
- `date`: `completed_at` in UTC as "Y-m-d H:i:s" ("2021-04-15 04:29:42"), seconds truncated.
  A naive timestamp is Invalid, never guessed.
- `email` is required (the server answers "Email is required"): none, or one the server's
  "name@domain.tld" check would reject (whitespace, no "@", no dot-separated domain with a
  top-level label of two or more characters, over 254 characters) → Skip.
- `first_name` as given; `last_name` reduced to its initial (first character with any combining
  marks, no dot): the official plugin sends first name plus last initial; data minimisation.
- `ip`: the first entry of a comma-separated forwarded list, stripped; an entry that is not an
  IPv4/IPv6 address is dropped with a note.
- `city`, `state` as given. `country`: exactly two ASCII letters, upper-cased; anything else is
  dropped with a note (the order is still sent: the country is decoration, not the purchase).
  Notes never repeat the dropped value: it is customer data and notes are logged.
- `line_items`: one per line, in order: `item_id` = product id, `item_variation_id` = variant id,
  `item_name` = line name, `item_link` = product url, `image_url`.
- Absent optional values: the key is left out, never sent as null. Every optional key is
  optional in the doc, and `country` is typed "string" (not "or null"), so leaving keys out is
  the one rule valid for all of them. Text is sent without surrounding whitespace; blank counts
  as absent.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Sequence

from consumer.model import JSON, Invalid, Order, OrderLine, Payload, Skip, TransformResult
from consumer.transform._common import is_ended, sql_utc, text, utc

MAX_ORDER_ID = 2**53 - 1  # JavaScript's Number.MAX_SAFE_INTEGER
DERIVED_ID_NAMESPACE = b"order-consumer/nudgify/order_id/v1\x00"
DERIVED_ID_OFFSET = 2**52
MAX_EMAIL_LENGTH = 254

_DIGITS = re.compile(r"(?:0|[1-9][0-9]*)")
_EMAIL = re.compile(r"[^\s@\x00-\x1f\x7f]+@(?:[^\s@.\x00-\x1f\x7f]+\.)+[^\s@.\x00-\x1f\x7f]{2,}")
_COUNTRY = re.compile(r"[A-Za-z]{2}")


def purchase(order: Order) -> TransformResult:
    """The order as one Nudgify order object, or why it is not sent."""
    if is_ended(order.state):
        return Skip(f"order state {order.state!r}: Purchase Nudges show completed purchases only")
    email = text(order.customer.email)
    if email is None:
        return Skip("no email address (Nudgify requires one)")
    if not is_acceptable_email(email):
        return Skip("email address fails Nudgify's name@domain.tld format check")
    completed_at = utc(order.completed_at)
    if completed_at is None:
        return Invalid("completed_at has no time zone")
    notes: list[str] = []
    body: dict[str, JSON] = {
        "order_id": order_id(order),
        "date": sql_utc(completed_at),
        "email": email,
        "first_name": text(order.customer.first_name),
        "last_name": initial(order.customer.last_name),
        "ip": _ip(order.customer.ip, notes),
        "city": text(order.address.city),
        "state": text(order.address.state),
        "country": _country(order.address.country, notes),
        "line_items": [_line_item(line) for line in order.lines],
    }
    return Payload(items=(_present(body),), notes=tuple(notes))


def request_body(site_key: str, orders: Sequence[JSON]) -> JSON:
    """The request body for a batch of order objects made by `purchase`."""
    return {"site_key": site_key, "orders": list(orders)}


def order_id(order: Order) -> int:
    """The integer Nudgify groups the order's items by, in [1, 2**53 - 1]; stable per order."""
    if order.order_id is not None and 1 <= order.order_id <= MAX_ORDER_ID:
        return order.order_id
    number = order.order_number.strip()
    # The length check first: int() refuses digit strings past 4300 digits with ValueError.
    short = len(number) <= len(str(MAX_ORDER_ID))
    if short and _DIGITS.fullmatch(number) and 1 <= int(number) <= MAX_ORDER_ID:
        return int(number)
    digest = hashlib.sha256(DERIVED_ID_NAMESPACE + number.encode("utf-8")).digest()
    return DERIVED_ID_OFFSET | (int.from_bytes(digest[:8], "big") & (DERIVED_ID_OFFSET - 1))


def is_acceptable_email(email: str) -> bool:
    """Would Nudgify's "name@domain.tld" check accept it? (Conservative: reject when unsure.)"""
    return len(email) <= MAX_EMAIL_LENGTH and _EMAIL.fullmatch(email) is not None


def initial(last_name: str | None) -> str | None:
    """The first character of the name (with its combining marks): "Gomes" → "G"."""
    name = text(last_name)
    if name is None:
        return None
    end = 1
    while end < len(name) and unicodedata.combining(name[end]):
        end += 1
    return name[:end]


def _ip(forwarded: str | None, notes: list[str]) -> str | None:
    first = text((forwarded or "").split(",")[0])
    if first is None:
        return None
    try:
        # A dotted quad that reads back as itself is already canonical: the C round trip costs
        # a tenth of `ipaddress`, which stays the judge of everything else (IPv6, typos).
        if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, first)) == first:
            return first
    except (OSError, ValueError):
        pass
    try:
        return str(ipaddress.ip_address(first))
    except ValueError:
        notes.append("ip dropped: the first forwarded entry is not an IP address")
        return None


def _country(country: str | None, notes: list[str]) -> str | None:
    code = text(country)
    if code is None:
        return None
    if _COUNTRY.fullmatch(code) is None:
        notes.append("country dropped: not two letters (ISO 3166-1 alpha-2)")
        return None
    return code.upper()


def _line_item(line: OrderLine) -> dict[str, JSON]:
    return _present(
        {
            "item_id": text(line.product_id),
            "item_variation_id": text(line.variant_id),
            "item_name": text(line.name),
            "item_link": text(line.url),
            "image_url": text(line.image_url),
        }
    )


def _present(fields: dict[str, JSON]) -> dict[str, JSON]:
    return {key: value for key, value in fields.items() if value is not None}
