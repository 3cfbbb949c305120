"""Nibble report-sale objects: what Nibble receives for an order, and which orders it never sees."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings

from consumer.model import Invalid, Payload, Skip
from consumer.transform import money, nibble
from tests.factories import make_line, make_order, orders

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def assert_golden(name: str, body: object) -> None:
    """`body` equals the golden file (UPDATE_GOLDEN=1 rewrites it after a deliberate change)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert body == json.loads(path.read_text(encoding="utf-8"))


def sale(order, *, report_all_sales: bool = True) -> dict:
    result = nibble.sale(order, report_all_sales=report_all_sales)
    assert isinstance(result, Payload), result
    assert len(result.items) == 1
    return result.items[0]


def doc_example_orders():
    """The two sales of Nibble's "Report Sale" example, as orders."""
    at = datetime(2023, 4, 21, 14, 30, tzinfo=UTC)
    cart_negotiated = make_order(
        order_number="ZY2314",
        completed_at=at,
        currency="USD",
        nibble_session_token="XXXX-XXX-XXX",
        cart_nibble_id="AB4534",
        lines=[
            make_line(product_id="ABCD", variant_id="EFGH", quantity=2, unit_price=Decimal("5.25"))
        ],
    )
    product_negotiated = make_order(
        order_number="ZY2314",
        completed_at=at,
        currency="GBP",
        nibble_session_token="XXXX-XXX-XXX",
        lines=[
            make_line(
                product_id="ABCD",
                variant_id="EFGH",
                quantity=1,
                unit_price=Decimal("5.00"),
                nibble_id="AB4535",
            )
        ],
    )
    return [cart_negotiated, product_negotiated]


def test_the_doc_example_sales_are_reproduced():
    assert_golden("nibble_report_sale.json", {"sales": [sale(o) for o in doc_example_orders()]})


def test_the_doc_example_differs_only_in_seconds_and_the_required_addon_flag():
    doc = json.loads((GOLDEN / "nibble_report_sale.doc-example.json").read_text())
    ours = [sale(o) for o in doc_example_orders()]
    for mine, theirs in zip(ours, doc["sales"], strict=True):
        assert mine["purchase_date_time"] == theirs["purchase_date_time"].replace("Z", ":00Z")
        assert {k: v for k, v in mine.items() if k not in ("purchase_date_time", "items")} == {
            k: v for k, v in theirs.items() if k not in ("purchase_date_time", "items")
        }
        for item, doc_item in zip(mine["items"], theirs["items"], strict=True):
            assert item == {**doc_item, "isNibbleAddonItem": False}


def test_a_sale_without_any_negotiation_is_reported_when_reporting_all_sales():
    body = sale(make_order(), report_all_sales=True)
    assert "nibble_id" not in body
    assert body["items"] == [
        {"product_id": "786", "variant_id": "786-M", "quantity": 1, "isNibbleAddonItem": False}
    ]


def test_a_sale_without_any_negotiation_is_skipped_when_reporting_negotiated_sales_only():
    result = nibble.sale(make_order(), report_all_sales=False)
    assert isinstance(result, Skip)
    assert "negotiated" in result.reason


@pytest.mark.parametrize(
    "negotiation",
    [{"cart_nibble_id": "NBC1"}, {"lines": [make_line(), make_line(nibble_id="NB1")]}],
    ids=["cart", "product"],
)
def test_negotiated_sales_are_reported_when_reporting_negotiated_sales_only(negotiation):
    assert isinstance(nibble.sale(make_order(**negotiation), report_all_sales=False), Payload)


@pytest.mark.parametrize("token", [None, "", "   "])
def test_a_sale_without_a_session_token_is_skipped(token):
    result = nibble.sale(make_order(nibble_session_token=token), report_all_sales=True)
    assert result == Skip("no Nibble session token")


@pytest.mark.parametrize(
    "negotiation",
    [
        {"cart_nibble_id": "NBC1"},
        {"lines": [make_line(nibble_id="NB1")]},
        {"lines": [make_line(), make_line(nibble_id="NB2", is_nibble_addon=True)]},
    ],
    ids=["cart", "product", "addon"],
)
@pytest.mark.parametrize("report_all_sales", [True, False])
def test_a_negotiated_sale_without_a_session_token_is_invalid(negotiation, report_all_sales):
    order = make_order(nibble_session_token=None, **negotiation)
    result = nibble.sale(order, report_all_sales=report_all_sales)
    assert isinstance(result, Invalid)
    assert "session token" in result.reason


@pytest.mark.parametrize("state", ["CANCELLED", "canceled", "RETURNED", "Refunded", "CLOSED"])
def test_cancelled_returned_refunded_and_closed_orders_are_never_reported(state):
    # Even a negotiated order without a token: it is skipped, not dead-lettered.
    order = make_order(state=state, cart_nibble_id="NBC1", nibble_session_token=None)
    result = nibble.sale(order, report_all_sales=True)
    assert isinstance(result, Skip)
    assert state in result.reason


@pytest.mark.parametrize("state", ["COMPLETE", "COMPLETED", "PROCESSING", "ON-HOLD"])
def test_other_states_are_reported(state):
    assert isinstance(nibble.sale(make_order(state=state), report_all_sales=True), Payload)


def test_the_purchase_time_is_iso_8601_utc_to_the_second():
    helsinki = timezone(timedelta(hours=3))
    order = make_order(completed_at=datetime(2023, 4, 21, 17, 30, 5, 123000, tzinfo=helsinki))
    assert sale(order)["purchase_date_time"] == "2023-04-21T14:30:05Z"


def test_a_purchase_time_without_a_zone_is_invalid():
    result = nibble.sale(
        make_order(completed_at=datetime(2023, 4, 21, 14, 30)), report_all_sales=True
    )
    assert result == Invalid("completed_at has no time zone")


def test_the_total_item_price_is_after_all_discounts_and_excludes_shipping():
    order = make_order(
        lines=[
            make_line(unit_price=Decimal("10.00"), quantity=3, discount=Decimal("5.00")),
            make_line(product_id="777", unit_price=Decimal("2.505"), quantity=1),
        ],
        discount=Decimal("1.00"),
        shipping=Decimal("4.90"),
    )
    assert sale(order)["total_item_price"] == "26.51"  # 25.00 + 2.505 - 1.00, half up


def test_a_yen_total_has_no_decimals():
    order = make_order(currency="JPY", lines=[make_line(unit_price=Decimal(1500), quantity=2)])
    body = sale(order)
    assert (body["currency_code"], body["total_item_price"]) == ("JPY", "3000")


def test_a_three_decimal_currency_total_keeps_three_decimals():
    order = make_order(currency="KWD", lines=[make_line(unit_price=Decimal("1.2345"))])
    assert sale(order)["total_item_price"] == "1.235"


def test_a_negative_item_total_is_invalid():
    order = make_order(lines=[make_line(unit_price=Decimal(1))], discount=Decimal(2))
    result = nibble.sale(order, report_all_sales=True)
    assert isinstance(result, Invalid)
    assert "negative" in result.reason


def test_the_cart_negotiation_id_is_sent_on_the_sale():
    assert sale(make_order(cart_nibble_id=" NBC1 "))["nibble_id"] == "NBC1"


def test_every_item_is_listed_with_its_negotiation_and_addon_flag():
    order = make_order(
        lines=[
            make_line(product_id="P1", variant_id=None, quantity=3),
            make_line(product_id="P2", variant_id="V2", nibble_id="NB7"),
            make_line(product_id="GIFT", variant_id=None, nibble_id="NB7", is_nibble_addon=True),
        ]
    )
    assert sale(order)["items"] == [
        {"product_id": "P1", "quantity": 3, "isNibbleAddonItem": False},
        {"product_id": "P2", "variant_id": "V2", "quantity": 1, "nibble_id": "NB7",
         "isNibbleAddonItem": False},
        {"product_id": "GIFT", "quantity": 1, "nibble_id": "NB7", "isNibbleAddonItem": True},
    ]  # fmt: skip


@pytest.mark.parametrize("nibble_id", [None, " "])
def test_an_addon_item_without_a_negotiation_id_is_invalid(nibble_id):
    order = make_order(lines=[make_line(), make_line(is_nibble_addon=True, nibble_id=nibble_id)])
    result = nibble.sale(order, report_all_sales=True)
    assert result == Invalid("line 2 is a Nibble addon item without a nibble_id")


def test_a_line_without_a_product_id_is_invalid():
    result = nibble.sale(make_order(lines=[make_line(product_id=" ")]), report_all_sales=True)
    assert result == Invalid("line 1 has no product_id")


def test_the_session_token_is_sent_without_surrounding_whitespace():
    assert sale(make_order(nibble_session_token=" sess-9 \n"))["session_token"] == "sess-9"


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(orders())
def test_any_reported_sale_has_the_orders_item_total_and_documented_formats(order):
    result = nibble.sale(order, report_all_sales=True)
    if not isinstance(result, Payload):
        return
    body = result.items[0]
    assert body["total_item_price"] == money.decimal_string(order.items_total, order.currency)
    half_minor_unit = Decimal(1).scaleb(-money.minor_unit_exponent(order.currency)) / 2
    assert abs(Decimal(body["total_item_price"]) - order.items_total) <= half_minor_unit
    assert ISO_UTC.fullmatch(body["purchase_date_time"])
    assert body["order_number"] == order.order_number
    assert len(body["items"]) == len(order.lines)
    assert all(isinstance(item["quantity"], int) for item in body["items"])
    assert all(isinstance(item["isNibbleAddonItem"], bool) for item in body["items"])
    assert not any(isinstance(value, float) for value in _leaves(body))
    json.dumps(body, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(orders())
def test_any_order_is_reported_skipped_or_invalid_by_the_rules(order):
    result = nibble.sale(order, report_all_sales=True)
    negotiated = bool(order.cart_nibble_id) or any(line.nibble_id for line in order.lines)
    if order.state.upper() in {"CANCELLED", "CANCELED", "RETURNED", "REFUNDED", "CLOSED"}:
        assert isinstance(result, Skip)
    elif order.nibble_session_token is None:
        assert isinstance(result, Invalid if negotiated else Skip)
    else:
        assert isinstance(result, Payload)


def _leaves(value):
    if isinstance(value, dict):
        for child in value.values():
            yield from _leaves(child)
    elif isinstance(value, list):
        for child in value:
            yield from _leaves(child)
    else:
        yield value


def test_an_order_without_lines_is_invalid():
    result = nibble.sale(make_order(lines=()), report_all_sales=True)
    assert result == Invalid("order has no lines: Nibble requires the sale's items")
