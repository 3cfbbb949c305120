"""Nudgify purchase orders: what a Purchase Nudge receives, and which orders it never sees."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.model import Address, Invalid, Payload, Skip
from consumer.transform import nudgify
from tests.factories import make_customer, make_line, make_order, orders

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
SQL_UTC = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
SITE_KEY = "510eeb08-814e-456a-b5c1-8c7c70cc4c00"


def assert_golden(name: str, body: object) -> None:
    """`body` equals the golden file (UPDATE_GOLDEN=1 rewrites it after a deliberate change)."""
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert body == json.loads(path.read_text(encoding="utf-8"))


def purchase(order) -> dict:
    result = nudgify.purchase(order)
    assert isinstance(result, Payload), result
    assert len(result.items) == 1
    return result.items[0]


def doc_example_order():
    """The order of Nudgify's "Example request body" (its email is obfuscated in the doc)."""
    return make_order(
        order_number="1111",
        completed_at=datetime(2021, 4, 15, 4, 29, 42, tzinfo=UTC),
        customer=make_customer(
            email="leon.gomes@example.com", first_name="Leon", last_name="Gomes", ip="92.21.8.106"
        ),
        address=Address(city="Los Angeles", state="California", country="US"),
        lines=[
            make_line(
                product_id="786",
                variant_id="SKU-786",
                name="LCD Display (Upgrade)",
                url="https://stroem.com/product/lcd",
                image_url="https://stroem.com/wp-content/LCD.png",
            ),
            make_line(
                product_id="777",
                variant_id="SKU-777",
                name="Throttle",
                url="https://stroem.com/product/upg",
                image_url="https://stroem.com/wp-content/Upg.png",
            ),
        ],
    )


def test_the_doc_example_request_is_reproduced():
    body = nudgify.request_body(SITE_KEY, [purchase(doc_example_order())])
    assert_golden("nudgify_purchases.json", body)


def test_the_doc_example_differs_only_in_the_integer_id_the_email_and_the_last_initial():
    doc = json.loads((GOLDEN / "nudgify_purchases.doc-example.json").read_text())
    ours = nudgify.request_body(SITE_KEY, [purchase(doc_example_order())])
    deviations = {"order_id": 1111, "email": "leon.gomes@example.com", "last_name": "G"}
    assert ours == {**doc, "orders": [{**doc["orders"][0], **deviations}]}


def test_the_request_body_wraps_orders_with_the_site_key():
    assert nudgify.request_body("key", [{"order_id": 1}]) == {
        "site_key": "key",
        "orders": [{"order_id": 1}],
    }


# --- order_id --------------------------------------------------------------------------------


def test_the_platforms_internal_order_id_is_the_order_id():
    assert purchase(make_order(order_number="SO-1", order_id=500001))["order_id"] == 500001


@pytest.mark.parametrize(
    ("number", "expected"),
    [("1111", 1111), ("1", 1), ("9007199254740991", 2**53 - 1)],
)
def test_a_numeric_order_number_is_the_order_id_when_there_is_no_internal_id(number, expected):
    assert purchase(make_order(order_number=number))["order_id"] == expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("SO-100001", 5003400128977948),
        ("0123", 8232360870338403),  # a leading zero: "123" keeps 123, "0123" differs
        ("9223372036854775808", 5186555197330802),  # beyond 64 bits
        # Beyond JavaScript's safe integers (2**53 - 1): a double would round it to a neighbour.
        ("9007199254740992", 7782604916119403),
        ("9223372036854775807", 6655735288649680),
        ("0", 7204388083571452),  # not an id in PHP or JavaScript (falsy)
        ("1" * 5000, None),  # longer than int() parses
    ],
)
def test_other_order_numbers_get_a_fixed_derived_integer_id(number, expected):
    # Pinned: changing the derivation would make Nudgify see every such order anew.
    order_id = purchase(make_order(order_number=number))["order_id"]
    assert order_id == expected or expected is None
    assert 2**52 <= order_id < 2**53


@pytest.mark.parametrize("unsafe", [2**53, 2**63 - 1, 0, -1, -(2**63)])
def test_an_internal_id_outside_javascripts_safe_integers_is_not_sent(unsafe):
    # Treated as absent: the numeric order number is used, else the derived id; never refused.
    assert purchase(make_order(order_number="1111", order_id=unsafe))["order_id"] == 1111
    derived = purchase(make_order(order_number="SO-100001", order_id=unsafe))["order_id"]
    assert derived == 5003400128977948


def test_the_largest_safe_internal_id_is_sent_as_it_is():
    assert purchase(make_order(order_id=2**53 - 1))["order_id"] == 2**53 - 1


def test_unicode_order_numbers_get_an_id_too():
    assert isinstance(purchase(make_order(order_number="Bestellung-ü-7"))["order_id"], int)


# --- date and email --------------------------------------------------------------------------


def test_the_date_is_utc_in_the_documented_format():
    order = make_order(
        completed_at=datetime(2021, 4, 15, 6, 29, 42, 999000, tzinfo=timezone(timedelta(hours=2)))
    )
    assert purchase(order)["date"] == "2021-04-15 04:29:42"


def test_a_date_without_a_zone_is_invalid():
    result = nudgify.purchase(make_order(completed_at=datetime(2021, 4, 15, 4, 29, 42)))
    assert result == Invalid("completed_at has no time zone")


@pytest.mark.parametrize("email", [None, "", "   "])
def test_an_order_without_an_email_is_skipped(email):
    result = nudgify.purchase(make_order(customer=make_customer(email=email)))
    assert result == Skip("no email address (Nudgify requires one)")


@pytest.mark.parametrize(
    "email",
    ["leon", "leon@", "@example.com", "leon@example", "leon@example.c", "leon@@example.com",
     "leon gomes@example.com", "leon@exa mple.com", "leon@example..com", "leon@.example.com",
     "leon@example.com.", "leon@exam\nple.com", "a" * 250 + "@example.com"],
)  # fmt: skip
def test_an_email_the_server_would_reject_is_skipped_and_not_repeated(email):
    result = nudgify.purchase(make_order(customer=make_customer(email=email)))
    assert isinstance(result, Skip)
    assert "format" in result.reason
    assert email.strip() not in result.reason


@pytest.mark.parametrize(
    "email", ["leon@example.com", "leon.gomes+shop@mail.example.co.uk", "o'neil@example.io",
              "ünï@exämple.de", "x@xn--p1ai.xn--p1ai"],
)  # fmt: skip
def test_ordinary_emails_are_sent(email):
    assert purchase(make_order(customer=make_customer(email=email)))["email"] == email


def test_the_email_is_sent_without_surrounding_whitespace():
    order = make_order(customer=make_customer(email=" leon@example.com "))
    assert purchase(order)["email"] == "leon@example.com"


# --- customer fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last_name", "initial"),
    [("Gomes", "G"), (" gomes", "g"), ("Émile", "É"), ("E\u0301mile", "E\u0301"), ("李", "李")],
)
def test_only_the_last_names_initial_is_sent(last_name, initial):
    body = purchase(make_order(customer=make_customer(first_name="Leon", last_name=last_name)))
    assert (body["first_name"], body["last_name"]) == ("Leon", initial)


@pytest.mark.parametrize(
    ("ip", "sent"),
    [
        ("92.21.8.106", "92.21.8.106"),
        (" 92.21.8.106 , 10.0.0.1, 172.16.0.1", "92.21.8.106"),
        ("2001:db8::1, 10.0.0.1", "2001:db8::1"),
    ],
)
def test_the_ip_is_the_first_entry_of_a_forwarded_list(ip, sent):
    assert purchase(make_order(customer=make_customer(ip=ip)))["ip"] == sent


@settings(max_examples=400)
@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: str(a).replace(".", ".0", 1)),
        st.text(alphabet="0123456789.:abcdefABCDEFx% \x00", max_size=24),
    )
)
def test_an_ip_is_sent_exactly_as_python_writes_that_address(ip):
    """What is sent is the address in its one canonical spelling, or nothing."""
    try:
        expected: str | None = str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        expected = None
    result = nudgify.purchase(make_order(customer=make_customer(ip=ip)))
    assert isinstance(result, Payload)
    assert result.items[0].get("ip") == expected


@pytest.mark.parametrize(
    "ip",
    ["unknown, 10.0.0.1", "92.21.8.106:443", "999.1.1.1", "092.21.8.106", "92.21.8",
     "0x5c.21.8.106", "92.21.8.106\x00", "92.21.8.106%eth0"],
)  # fmt: skip
def test_an_ip_that_is_not_an_address_is_dropped_with_a_note(ip):
    result = nudgify.purchase(make_order(customer=make_customer(ip=ip)))
    assert isinstance(result, Payload)
    assert "ip" not in result.items[0]
    assert result.notes == ("ip dropped: the first forwarded entry is not an IP address",)


@pytest.mark.parametrize(("country", "sent"), [("US", "US"), ("gb", "GB"), (" Fi ", "FI")])
def test_the_country_is_sent_as_two_upper_case_letters(country, sent):
    result = nudgify.purchase(make_order(address=Address(country=country)))
    assert isinstance(result, Payload)
    assert (result.items[0]["country"], result.notes) == (sent, ())


@pytest.mark.parametrize("country", ["USA", "United States", "U", "1A", "ÜS", "U.S."])
def test_an_invalid_country_is_dropped_with_a_note_and_the_order_still_sent(country):
    result = nudgify.purchase(make_order(address=Address(country=country)))
    assert isinstance(result, Payload)
    assert "country" not in result.items[0]
    assert len(result.notes) == 1
    assert "country dropped" in result.notes[0]
    assert country not in result.notes[0]


def test_absent_optional_fields_are_left_out_never_null():
    order = make_order(
        customer=make_customer(first_name=None, last_name=" ", ip=None),
        address=Address(),
        lines=[make_line(variant_id=None, url=None, image_url=None)],
    )
    body = purchase(order)
    assert set(body) == {"order_id", "date", "email", "line_items"}
    assert body["line_items"] == [{"item_id": "786", "item_name": "LCD Display (Upgrade)"}]


def test_each_line_becomes_a_line_item():
    order = make_order(lines=[make_line(product_id="P1"), make_line(product_id="P2", quantity=4)])
    assert [item["item_id"] for item in purchase(order)["line_items"]] == ["P1", "P2"]


@pytest.mark.parametrize("state", ["CANCELLED", "Canceled", "RETURNED", "REFUNDED", "CLOSED"])
def test_cancelled_returned_and_refunded_orders_are_never_shown(state):
    result = nudgify.purchase(make_order(state=state))
    assert isinstance(result, Skip)
    assert state in result.reason


# --- properties ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(orders())
def test_any_sent_order_has_an_integer_id_a_documented_date_and_no_nulls(order):
    result = nudgify.purchase(order)
    if not isinstance(result, Payload):
        return
    body = result.items[0]
    assert type(body["order_id"]) is int
    assert 1 <= body["order_id"] <= 2**53 - 1  # safe in JavaScript and any double-based reader
    if order.order_id is not None and 1 <= order.order_id <= 2**53 - 1:
        assert body["order_id"] == order.order_id
    assert SQL_UTC.fullmatch(body["date"])
    assert "country" not in body or re.fullmatch(r"[A-Z]{2}", body["country"])
    assert None not in body.values()
    assert all(None not in item.values() for item in body["line_items"])
    json.dumps(body, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(orders(max_lines=2), orders(max_lines=2))
def test_the_order_id_is_stable_for_the_same_order_number(first, second):
    # Same order number, nothing else in common (e.g. a later event of the same order).
    first, second = replace(first, order_id=None), replace(second, order_id=None)
    again = replace(second, order_number=first.order_number)
    assert nudgify.order_id(first) == nudgify.order_id(again)
    assert type(nudgify.order_id(first)) is int


def test_an_order_without_lines_is_still_shown_without_line_items():
    assert purchase(make_order(lines=()))["line_items"] == []
