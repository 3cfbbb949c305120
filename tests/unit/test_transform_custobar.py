"""Custobar sale rows: what the CRM receives for an order, in which money, in which state."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings

from consumer.model import Customer, Invalid, Payload, Skip
from consumer.transform import custobar, money
from tests.factories import make_customer, make_line, make_order, orders

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
MONEY_FIELDS = {"unit_price", "unit_price_in_currency", "discount", "total", "sale_discount",
                "sale_shipping", "sale_shipping_in_currency", "sale_total"}  # fmt: skip
ROW_FIELDS = {"sale_external_id", "external_id", "product_id", "product_sku", "quantity",
              "unit_price", "discount", "total", "unit_price_in_currency", "tags"}  # fmt: skip


def assert_golden(name: str, body: object) -> None:
    """`body` equals the golden file (UPDATE_GOLDEN=1 rewrites it after a deliberate change)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert body == json.loads(path.read_text(encoding="utf-8"))


def rows(order, *, default_currency: str = "EUR", company: str = "COMPANY") -> list[dict]:
    result = custobar.rows(order, default_currency=default_currency, company=company)
    assert isinstance(result, Payload), result
    return list(result.items)


def doc_example_orders():
    """Custobar's upload example: sale 1000 in EUR, and a USD sale 5000 (its second row shown)."""
    sale_1000 = make_order(
        order_number="1000",
        completed_at=datetime(2017, 12, 1, 13, 11, 23, tzinfo=UTC),
        customer=Customer(id="A501"),
        shop_id="1",
        payment_method="Credit Card",
        shipping_method=None,
        lines=[
            make_line(product_id="SKU0435", variant_id=None, sku=None, unit_price=Decimal("12.00")),
            make_line(
                product_id="SKU3429",
                variant_id=None,
                sku=None,
                unit_price=Decimal("20.80"),
                quantity=2,
                discount=Decimal("2.00"),
            ),
        ],
        custom_fields={"sales_person": "3"},
    )
    sale_5000 = make_order(
        order_number="5000",
        completed_at=datetime(2017, 12, 1, 14, 0, tzinfo=UTC),
        currency="USD",
        exchange_rate=Decimal("1.1120000000"),
        customer=Customer(id="A502"),
        shop_id="1",
        payment_method="Credit Card",
        shipping_method=None,
        lines=[
            make_line(product_id="SKU0435", variant_id=None, sku=None, unit_price=Decimal("13.35")),
            make_line(
                product_id="SKU3429",
                variant_id=None,
                sku=None,
                unit_price=Decimal("20.80"),
                quantity=2,
            ),
        ],
    )
    return sale_1000, sale_5000


def test_the_doc_example_upload_is_reproduced():
    body = custobar.request_body([row for order in doc_example_orders() for row in rows(order)])
    assert_golden("custobar_sales_upload.json", body)


def test_a_yen_sale_in_a_euro_account_is_sent_in_hundredths_on_both_sides():
    order = make_order(
        order_number="JP-1",
        currency="JPY",
        exchange_rate=Decimal("160.25"),
        customer=Customer(id="A503"),
        lines=[make_line(product_id="P1", variant_id=None, sku=None, unit_price=Decimal(1500),
                         quantity=2, discount=Decimal(100))],
        discount=Decimal(50),
        shipping=Decimal(800),
        tags=("jp",),
    )  # fmt: skip
    assert_golden("custobar_sales_upload.jpy-in-eur.json", custobar.request_body(rows(order)))


def test_the_doc_example_rows_are_ours_with_only_documented_additions():
    doc = json.loads((GOLDEN / "custobar_sales_upload.doc-example.json").read_text())
    ours = {row["external_id"]: row for order in doc_example_orders() for row in rows(order)}
    additions = {
        "1000-1": {"discount": 0},
        "1000-2": {},
        "5000-2": {"unit_price": 1871, "discount": 0, "total": 3741},
    }
    for doc_row in doc["sales"]:
        row_id = doc_row["external_id"]
        row = ours[row_id]
        # Transaction fields may ride on any row; ours ride on the sale's first row.
        sale = ours[row_id.split("-")[0] + "-1"]
        doc_sale = {k: v for k, v in doc_row.items() if k.startswith("sale_")}
        assert doc_sale.items() <= sale.items()
        expected = {k: v for k, v in doc_row.items() if k not in doc_sale} | additions[row_id]
        assert {k: v for k, v in row.items() if not k.startswith("sale_")} == expected
    # Sale 1000 is shown whole: its transaction fields are exactly the doc's plus ours.
    sale_1000 = {k: v for k, v in ours["1000-1"].items() if k.startswith("sale_")}
    doc_1000 = {k: v for k, v in doc["sales"][0].items() if k.startswith("sale_")}
    assert sale_1000 == doc_1000 | {"sale_state": "COMPLETE", "sale_shipping": 0}


def test_the_request_body_wraps_the_rows():
    assert custobar.request_body([{"a": 1}]) == {"sales": [{"a": 1}]}


# --- rows ------------------------------------------------------------------------------------


def test_each_line_is_a_row_with_a_stable_external_id_and_the_sales_id():
    order = make_order(order_number="SO-7", lines=[make_line(), make_line(), make_line()])
    assert [(r["sale_external_id"], r["external_id"]) for r in rows(order)] == [
        ("SO-7", "SO-7-1"),
        ("SO-7", "SO-7-2"),
        ("SO-7", "SO-7-3"),
    ]


def test_only_the_first_row_carries_the_transaction_fields():
    order = make_order(lines=[make_line(), make_line()], coupon_codes=("WINTER5",), tags=("vip",),
                       custom_fields={"channel": "ads"})  # fmt: skip
    first, second = rows(order)
    assert {key for key in first if key.startswith("sale_") or "__" in key} == {
        "sale_external_id", "sale_customer_id", "sale_phone_number", "sale_email", "sale_date",
        "sale_shop_id", "sale_state", "sale_discount", "sale_shipping", "sale_total",
        "sale_payment_method", "sale_shipping_method", "sale_coupon_codes", "COMPANY__channel",
    }  # fmt: skip
    assert set(second) == ROW_FIELDS - {"unit_price_in_currency"}


def test_every_row_of_the_sale_carries_the_orders_tags():
    # `tags` is a row field too: on the first row only, Custobar would tag that row alone.
    order = make_order(lines=[make_line(), make_line(), make_line()], tags=("vip", " b2b", "vip"))
    assert [row["tags"] for row in rows(order)] == [["vip", "b2b"]] * 3


def test_an_order_without_tags_sends_no_tags_key_on_any_row():
    assert not any("tags" in row for row in rows(make_order(lines=[make_line()] * 2, tags=(" ",))))


def test_the_variant_is_the_product_and_the_sku_is_sent_alongside():
    with_variant, without = rows(
        make_order(lines=[make_line(product_id="P1", variant_id="P1-M", sku="SKU-1"),
                          make_line(product_id="P2", variant_id=None, sku=None)])
    )  # fmt: skip
    assert (with_variant["product_id"], with_variant["product_sku"]) == ("P1-M", "SKU-1")
    assert without["product_id"] == "P2"
    assert "product_sku" not in without


def test_money_is_in_integer_cents_before_and_after_the_line_discount():
    line = make_line(unit_price=Decimal("20.80"), quantity=2, discount=Decimal("2.005"))
    (row,) = rows(make_order(lines=[line]))
    assert (row["unit_price"], row["quantity"], row["discount"], row["total"]) == (
        2080,
        2,
        201,
        3960,
    )


def test_yen_amounts_are_sent_in_hundredths_of_a_yen_like_every_currency():
    # "in cents" for every currency: ¥1500 → 150000, never 1500 (ISO 4217's 0 decimals).
    order = make_order(currency="JPY", lines=[make_line(unit_price=Decimal(1500), quantity=2)],
                       shipping=Decimal(500), discount=Decimal("100.505"))  # fmt: skip
    (row,) = rows(order, default_currency="JPY")
    assert (row["unit_price"], row["total"], row["sale_shipping"]) == (150000, 300000, 50000)
    assert (row["sale_discount"], row["sale_total"]) == (10051, 339949)


@pytest.mark.parametrize(
    ("currency", "amount", "sent"),
    [("KWD", "1.2345", 123), ("BHD", "0.505", 51), ("JPY", "1499.995", 150000),
     ("USD", "20.805", 2081), ("SEK", "199", 19900), ("EUR", "950.00", 95000)],
)  # fmt: skip
def test_money_is_hundredths_of_the_unit_in_every_currency_rounded_half_up(currency, amount, sent):
    (row,) = rows(make_order(currency=currency, lines=[make_line(unit_price=Decimal(amount))]),
                  default_currency=currency)  # fmt: skip
    assert row["unit_price"] == sent


def test_the_sale_total_is_the_sum_of_the_rounded_parts():
    # Each 0.005 rounds up on its own: the rows sum to 3 cents, the order's own total is 1.5.
    order = make_order(
        lines=[make_line(unit_price=Decimal("0.005")) for _ in range(3)],
        discount=Decimal("0.005"),
        shipping=Decimal("0.005"),
    )
    first = rows(order)[0]
    assert (first["sale_discount"], first["sale_shipping"], first["sale_total"]) == (1, 1, 3)


def test_the_sale_total_is_what_the_customer_paid_including_shipping():
    # The doc's fallback (rows - sale_discount) leaves shipping out; we send it in, as the
    # official plugins do: the order's own total, and sale_shipping says how much of it.
    order = make_order(lines=[make_line(unit_price=Decimal("20.00"), quantity=2)],
                       discount=Decimal("5.00"), shipping=Decimal("4.90"))  # fmt: skip
    (row,) = rows(order)
    assert (row["total"], row["sale_discount"], row["sale_shipping"]) == (4000, 500, 490)
    assert row["sale_total"] == 3990 == money.hundredths(order.total)
    assert row["sale_total"] - (row["total"] - row["sale_discount"]) == row["sale_shipping"]


def test_coupon_codes_and_tags_are_sent_once_each_and_only_when_present():
    first = rows(make_order(coupon_codes=("A", " A", "B", ""), tags=("vip", "vip")))[0]
    assert (first["sale_coupon_codes"], first["tags"]) == (["A", "B"], ["vip"])
    bare = rows(make_order(coupon_codes=(), tags=(), shop_id=None, payment_method=" "))[0]
    assert not {"sale_coupon_codes", "tags", "sale_shop_id", "sale_payment_method"} & set(bare)


def test_the_sale_date_is_utc_with_a_zone():
    order = make_order(
        completed_at=datetime(2017, 12, 1, 15, 11, 23, tzinfo=timezone(timedelta(hours=2)))
    )
    assert rows(order)[0]["sale_date"] == "2017-12-01T13:11:23Z"


def test_a_sale_date_without_a_zone_is_invalid():
    result = custobar.rows(make_order(completed_at=datetime(2017, 12, 1)), default_currency="EUR",
                           company="C")  # fmt: skip
    assert result == Invalid("completed_at has no time zone")


def test_a_line_without_a_product_id_is_invalid():
    order = make_order(lines=[make_line(), make_line(product_id="", variant_id="V")])
    result = custobar.rows(order, default_currency="EUR", company="C")
    assert result == Invalid("line 2 has no product_id")


# --- customer --------------------------------------------------------------------------------


def test_every_customer_identifier_is_sent_under_its_sale_name():
    first = rows(make_order(customer=make_customer(id="C1", phone="+3584012", email="a@b.fi")))[0]
    assert (first["sale_customer_id"], first["sale_phone_number"], first["sale_email"]) == (
        "C1", "+3584012", "a@b.fi",
    )  # fmt: skip


@pytest.mark.parametrize("field", ["id", "phone", "email"])
def test_one_customer_identifier_is_enough(field):
    assert isinstance(
        custobar.rows(make_order(customer=Customer(**{field: "x@y.fi"})), default_currency="EUR",
                      company="C"),
        Payload,
    )  # fmt: skip


@pytest.mark.parametrize("customer", [Customer(), Customer(id=" ", phone="", email=None,
                                                           first_name="Leon")])  # fmt: skip
def test_an_order_without_a_customer_identifier_is_skipped(customer):
    result = custobar.rows(make_order(customer=customer), default_currency="EUR", company="C")
    assert result == Skip("no customer identifier (customer id, phone or email)")


# --- state -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "sale_state"),
    [("COMPLETE", "COMPLETE"), ("completed", "COMPLETE"), ("CANCELLED", "CANCELLED"),
     ("canceled", "CANCELLED"), ("RETURNED", "CANCELLED"), ("Refunded", "CANCELLED"),
     ("ON-HOLD", "HOLDED"), ("on_hold", "HOLDED"), ("HOLDED", "HOLDED"), ("hold", "HOLDED"),
     ("NEW", "NEW"), ("pending", "PENDING_PAYMENT"), ("Pending Payment", "PENDING_PAYMENT"),
     ("PENDING_PAYMENT", "PENDING_PAYMENT"), ("processing", "PROCESSING"), ("CLOSED", "CLOSED")],
)  # fmt: skip
def test_order_states_are_sent_as_the_documented_sale_states(state, sale_state):
    assert rows(make_order(state=state))[0]["sale_state"] == sale_state


@pytest.mark.parametrize("state", ["SHIPPED", "", "COMPLETE-ISH"])
def test_an_unknown_state_is_invalid(state):
    result = custobar.rows(make_order(state=state), default_currency="EUR", company="C")
    assert result == Invalid(f"order state {state!r} has no Custobar sale_state")


# --- currency --------------------------------------------------------------------------------


def test_a_foreign_sale_is_sent_in_both_currencies():
    order = make_order(
        currency="USD",
        exchange_rate=Decimal("1.1120000000"),
        lines=[make_line(unit_price=Decimal("20.80"), quantity=2, discount=Decimal("1.00"))],
        discount=Decimal("0.50"),
        shipping=Decimal("4.90"),
    )
    (row,) = rows(order)
    assert row["sale_currency"] == "USD"
    assert row["sale_exchange_rate"] == 1.112
    assert row["unit_price_in_currency"] == 2080
    assert row["sale_shipping_in_currency"] == 490
    # 20.80/1.112 = 18.705 → 1871; 1.00/1.112 → 90; 40.60/1.112 = 36.51 → 3651
    assert (row["unit_price"], row["discount"], row["total"]) == (1871, 90, 3651)
    # 0.50/1.112 = 0.4496 → 45; 4.90/1.112 = 4.4065 → 441; 3651 - 45 + 441
    assert (row["sale_discount"], row["sale_shipping"], row["sale_total"]) == (45, 441, 4047)


def test_a_foreign_sale_into_a_yen_account_is_in_hundredths_of_a_yen():
    order = make_order(currency="EUR", exchange_rate=Decimal("0.0061538462"),
                       lines=[make_line(unit_price=Decimal("12.34"))])  # fmt: skip
    (row,) = rows(order, default_currency="JPY")
    assert (row["unit_price_in_currency"], row["unit_price"]) == (1234, 200525)  # ¥2005.25


# Units of the sale currency per euro, so that the doc's `price / rate` is the price in euros.
EURO_RATES = {"JPY": "160.25", "KWD": "0.3312", "BHD": "0.4105", "USD": "1.112", "SEK": "11.4975"}


@pytest.mark.parametrize(
    ("currency", "unit_price", "in_currency", "in_euros"),
    [("JPY", "1500", 150000, 936), ("KWD", "1.2345", 123, 373), ("BHD", "0.505", 51, 123),
     ("USD", "20.80", 2080, 1871), ("SEK", "199.00", 19900, 1731)],
)  # fmt: skip
def test_the_docs_conversion_formula_gives_the_euro_price_of_a_foreign_sale(
    currency, unit_price, in_currency, in_euros
):
    rate = Decimal(EURO_RATES[currency])
    order = make_order(currency=currency, exchange_rate=rate, shipping=Decimal(unit_price),
                       lines=[make_line(unit_price=Decimal(unit_price))])  # fmt: skip
    (row,) = rows(order, default_currency="EUR")
    assert (row["unit_price_in_currency"], row["unit_price"]) == (in_currency, in_euros)
    assert row["sale_shipping_in_currency"] == in_currency
    assert row["sale_shipping"] == in_euros
    # unit_price_in_currency / sale_exchange_rate = the price in the default currency, within
    # the rounding of each side (half a hundredth each; the sale side's is divided by the rate).
    slack = Decimal("0.5") + Decimal("0.5") / rate
    assert abs(Decimal(row["unit_price_in_currency"]) / rate - row["unit_price"]) <= slack


@settings(max_examples=80, deadline=None)
@given(orders(base_currency="EUR", currencies=tuple(EURO_RATES), max_lines=5))
def test_for_any_foreign_sale_every_row_obeys_the_docs_conversion_formula(order):
    result = custobar.rows(order, default_currency="EUR", company="COMPANY")
    if not isinstance(result, Payload):
        return
    rate = order.exchange_rate
    slack = Decimal("0.5") + Decimal("0.5") / rate
    for row, line in zip(result.items, order.lines, strict=True):
        assert row["unit_price_in_currency"] == money.hundredths(line.unit_price)
        assert abs(Decimal(row["unit_price_in_currency"]) / rate - row["unit_price"]) <= slack


@pytest.mark.parametrize("rate", [None, Decimal(0), Decimal(-1), Decimal("NaN")])
def test_a_foreign_sale_without_a_usable_exchange_rate_is_invalid(rate):
    result = custobar.rows(make_order(currency="USD", exchange_rate=rate), default_currency="EUR",
                           company="C")  # fmt: skip
    assert result == Invalid("sale in USD, not the default EUR: needs a positive exchange_rate")


def test_a_sale_in_the_default_currency_sends_no_currency_fields():
    (row,) = rows(make_order(currency="EUR", exchange_rate=Decimal("1.5")), default_currency="eur")
    assert row["unit_price"] == 4990
    assert not {"sale_currency", "sale_exchange_rate", "unit_price_in_currency",
                "sale_shipping_in_currency"} & set(row)  # fmt: skip


# --- company fields --------------------------------------------------------------------------


def test_custom_fields_are_sent_under_the_upper_cased_company_name():
    order = make_order(custom_fields={"pos_id": "7", "Sales_Person2": "3"})
    first = rows(order, company=" acme ")[0]
    assert (first["ACME__pos_id"], first["ACME__Sales_Person2"]) == ("7", "3")


def test_custom_fields_with_unusable_keys_are_dropped_with_a_note():
    order = make_order(custom_fields={"ok": "1", "pos id": "2", "päivä": "3", "": "4"})
    result = custobar.rows(order, default_currency="EUR", company="ACME")
    assert isinstance(result, Payload)
    assert [key for key in result.items[0] if "__" in key] == ["ACME__ok"]
    assert len(result.notes) == 3
    assert all("dropped" in note for note in result.notes)


@pytest.mark.parametrize("company", ["", "  ", "ac me", "acme-x"])
def test_a_company_name_that_cannot_prefix_a_field_is_a_configuration_error(company):
    with pytest.raises(ValueError, match="company short name"):
        custobar.rows(make_order(), default_currency="EUR", company=company)


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(orders(base_currency="EUR"))
def test_for_any_order_the_row_totals_minus_discount_plus_shipping_are_the_sale_total(order):
    result = custobar.rows(order, default_currency="EUR", company="COMPANY")
    if isinstance(result, Skip):
        assert not custobar.customer_identifiers(order.customer)
        return
    assert isinstance(result, Payload)
    first = result.items[0]
    totals = sum(row["total"] for row in result.items)
    assert totals - first["sale_discount"] + first["sale_shipping"] == first["sale_total"]
    if order.exchange_rate is None:
        cents = money.hundredths(order.total)
        assert abs(first["sale_total"] - cents) <= len(order.lines) + 2  # one rounding per part


@settings(max_examples=60, deadline=None)
@given(orders(base_currency="EUR"))
def test_every_row_of_any_order_carries_its_sale_and_a_unique_row_id(order):
    result = custobar.rows(order, default_currency="EUR", company="COMPANY")
    if not isinstance(result, Payload):
        return
    assert len(result.items) == len(order.lines)
    assert all(row["sale_external_id"] == order.order_number for row in result.items)
    assert len({row["external_id"] for row in result.items}) == len(order.lines)
    assert ISO_UTC.fullmatch(result.items[0]["sale_date"])
    assert all(set(row) <= ROW_FIELDS for row in result.items[1:])


@settings(max_examples=60, deadline=None)
@given(orders(base_currency="EUR"))
def test_no_money_field_of_any_order_is_ever_a_float(order):
    result = custobar.rows(order, default_currency="EUR", company="COMPANY")
    if not isinstance(result, Payload):
        return
    for row in result.items:
        for key, value in row.items():
            if key in MONEY_FIELDS or key == "quantity":
                assert type(value) is int, (key, value)
            elif isinstance(value, float):
                assert key == "sale_exchange_rate"
                assert value == float(order.exchange_rate)
    json.dumps(list(result.items), allow_nan=False)


def test_an_order_without_lines_is_invalid():
    result = custobar.rows(make_order(lines=()), default_currency="EUR", company="C")
    assert result == Invalid("order has no lines: Custobar sales are made of rows")
