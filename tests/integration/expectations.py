"""What each destination should receive for a set of sample orders, by the transforms' rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from consumer.decode import to_order
from consumer.model import Payload
from consumer.transform import custobar, nibble, nudgify


def expected_keys(orders: Sequence[dict[str, Any]]) -> dict[str, set[str]]:
    """Per destination, the keys the sandbox files accepted items under."""
    keys: dict[str, set[str]] = {"nibble": set(), "nudgify": set(), "custobar": set()}
    for record in orders:
        order = to_order(record)
        if isinstance(nibble.sale(order, report_all_sales=True), Payload):
            keys["nibble"].add(order.order_number)
        purchase = nudgify.purchase(order)
        if isinstance(purchase, Payload):
            keys["nudgify"].add(str(purchase.items[0]["order_id"]))
        if isinstance(custobar.rows(order, default_currency="EUR", company="COMPANY"), Payload):
            keys["custobar"].add(order.order_number)
    return keys
