"""The sandbox answers as the vendors' docs say: every doc example is accepted, every documented
error message is produced by a request that should produce it, and every payload our transforms
make is accepted. The sandbox runs on a loopback port in this process."""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from consumer.model import Order, Payload
from consumer.sandbox.control import run_sandbox_in_thread
from consumer.sandbox.settings import SandboxSettings
from consumer.transform import custobar, nibble, nudgify
from tests.factories import orders

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
CREDS = SandboxSettings()
NIBBLE_AUTH = {"X-Api-Key": CREDS.nibble_api_key, "X-Nibble-Api-Secret": CREDS.nibble_api_secret}
NUDGIFY_AUTH = {"Authorization": f"Bearer {CREDS.nudgify_api_key}"}
CUSTOBAR_AUTH = {"Authorization": f"Token {CREDS.custobar_token}"}


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with run_sandbox_in_thread(CREDS) as url, httpx.Client(base_url=url) as test_client:
        yield test_client


@pytest.fixture(autouse=True)
def fresh(client: httpx.Client) -> None:
    client.post("/_sandbox/reset")


# The published Nudgify page runs its example address through an e-mail obfuscator, which
# leaves "[email protected]": no address at all. The example is used with a real one.
OBFUSCATED_EMAIL = "[email protected]"


def golden(name: str) -> Any:
    text = (GOLDEN / name).read_text()
    return json.loads(text.replace(OBFUSCATED_EMAIL, "leon.gomes@example.com"))


def nudgify_order(**changes: Any) -> dict[str, Any]:
    order = copy.deepcopy(golden("nudgify_purchases.doc-example.json")["orders"][0])
    for key, value in changes.items():
        if value is None:
            order.pop(key, None)
        else:
            order[key] = value
    return order


def nibble_sale(**changes: Any) -> dict[str, Any]:
    sale = copy.deepcopy(golden("nibble_report_sale.doc-example.json")["sales"][0])
    sale.update(changes)
    return {k: v for k, v in sale.items() if v is not None}


# --- every example body in the docs is accepted ---------------------------------------------


def test_the_nibble_report_sale_example_is_accepted(client: httpx.Client) -> None:
    body = golden("nibble_report_sale.doc-example.json")
    response = client.post("/nibble/v1/sales", json=body, headers=NIBBLE_AUTH)
    assert response.status_code == 200, response.text
    assert [r["key"] for r in client.get("/_sandbox/records/nibble").json()] == [
        s["order_number"] for s in body["sales"]
    ]


def test_the_nibble_create_and_get_session_examples_work_as_the_checkout_flow_needs(
    client: httpx.Client,
) -> None:
    example = {  # the doc's body, with the comma its JSON misses after threshold_price
        "session_token": "XXXX", "currency_code": "GBP", "negotiation_type": "product",
        "product_id": "ABCD", "product_name": "My Product", "variant_id": "DEF123",
        "variant_name": "Small", "product_price": "150.00", "threshold_price": "120.00",
        "quantity": 2, "maxQuantity": 5,
    }  # fmt: skip
    created = client.post("/nibble/v1/session", json=example, headers=NIBBLE_AUTH)
    assert created.status_code == 200, created.text
    nibble_id = created.json()["nibbleId"]
    assert created.json()["maxQuantity"] == 5
    client.post(f"/_sandbox/nibble/sessions/{nibble_id}/finish",
                json={"negotiated_price": "130.50", "quantity": 2})  # fmt: skip
    verified = client.get(f"/nibble/v1/session/{nibble_id}", headers=NIBBLE_AUTH).json()
    assert verified["sessionStatus"] == "successful"
    assert verified["productId"] == "ABCD"
    assert verified["retailerSessionId"] == "XXXX"
    assert (verified["negotiatedPrice"], verified["quantity"]) == ("130.50", 2)


def test_a_new_nibble_session_takes_the_documented_defaults(client: httpx.Client) -> None:
    body = {"session_token": "s", "product_id": "P", "product_name": "N", "original_price": "9"}
    session = client.post("/nibble/v1/session", json=body, headers=NIBBLE_AUTH).json()
    assert session["currencyCode"] == "GBP"
    assert session["negotiationType"] == "product"
    assert (session["quantity"], session["maxQuantity"]) == (1, 10)


def test_the_nudgify_example_is_accepted_with_the_documented_success_body(
    client: httpx.Client,
) -> None:
    body = golden("nudgify_purchases.doc-example.json")
    response = client.post("/nudgify/api/purchases", json=body, headers=NUDGIFY_AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Request successfully saved."
    assert len(response.json()["data"]) == len(body["orders"])


@pytest.mark.parametrize("auth", ["token", "bearer", "basic"])
def test_the_custobar_example_is_accepted_with_each_authentication(
    client: httpx.Client, auth: str
) -> None:
    basic = base64.b64encode(f"{CREDS.custobar_user}:{CREDS.custobar_password}".encode()).decode()
    header = {"token": f"Token {CREDS.custobar_token}", "bearer": f"Bearer {CREDS.custobar_token}",
              "basic": f"Basic {basic}"}[auth]  # fmt: skip
    body = golden("custobar_sales_upload.doc-example.json")
    response = client.post("/custobar/api/sales/upload/", json=body,
                           headers={"Authorization": header})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json() == {"response": "ok"}


def test_custobar_takes_a_bare_list_as_well(client: httpx.Client) -> None:
    rows = golden("custobar_sales_upload.doc-example.json")["sales"]
    response = client.post("/custobar/api/sales/upload/", json=rows, headers=CUSTOBAR_AUTH)
    assert response.status_code == 200, response.text


# --- every documented error is produced ------------------------------------------------------

NIBBLE_ERRORS = [
    ({"sales": [nibble_sale(order_number=None)]}, NIBBLE_AUTH, 400, "order_number must be specified"),  # noqa: E501
    ({"sales": [nibble_sale()]}, {**NIBBLE_AUTH, "X-Nibble-Api-Secret": "wrong"}, 401, "API Secret is not valid."),  # noqa: E501
    ({"sales": [nibble_sale()]}, {}, 401, "API Key is not valid."),
    ({"sales": [nibble_sale()] * 51}, NIBBLE_AUTH, 400, "A maximum of 50 sales can be reported at a time"),  # noqa: E501
    ({"sales": [nibble_sale(purchase_date_time="2023-04-21 14:30")]}, NIBBLE_AUTH, 400,
     "purchase_date_time must be an ISO 8601 date and time in UTC or with a time zone"),
    ({"sales": [nibble_sale(total_item_price=10.5)]}, NIBBLE_AUTH, 400, "total_item_price must be a string"),  # noqa: E501
    ({"sales": [nibble_sale(items=[{"quantity": 1}])]}, NIBBLE_AUTH, 400, "product_id must be specified"),  # noqa: E501
    ({"sales": [nibble_sale(items=[{"product_id": "A", "isNibbleAddonItem": "yes"}])]}, NIBBLE_AUTH,
     400, "isNibbleAddonItem must be a boolean"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "headers", "status", "message"), NIBBLE_ERRORS)
def test_nibble_report_sale_errors_are_the_documented_ones(
    client: httpx.Client, body: Any, headers: dict[str, str], status: int, message: str
) -> None:
    response = client.post("/nibble/v1/sales", json=body, headers=headers)
    assert (response.status_code, response.json()) == (status, {"errorMessage": message})
    assert client.get("/_sandbox/records/nibble").json() == []


def test_nibble_session_errors_are_the_documented_ones(client: httpx.Client) -> None:
    missing_product = {"session_token": "s", "original_price": "1.00", "product_name": "N"}
    created = client.post("/nibble/v1/session", json=missing_product, headers=NIBBLE_AUTH)
    assert (created.status_code, created.json()) == (
        400,
        {"errorMessage": "productId must be specified"},
    )
    no_id = client.get("/nibble/v1/session/", headers=NIBBLE_AUTH)
    assert (no_id.status_code, no_id.json()) == (
        400,
        {"errorMessage": "sessionId must be specified"},
    )
    assert client.get("/nibble/v1/session/AB1934", headers=NIBBLE_AUTH).status_code == 404
    unauthorized = client.get(
        "/nibble/v1/session/AB1934", headers={"X-Api-Key": CREDS.nibble_api_key}
    )
    assert (unauthorized.status_code, unauthorized.json()) == (
        401,
        {"errorMessage": "API Secret is not valid."},
    )


def test_unknown_nibble_paths_answer_like_its_api_gateway(client: httpx.Client) -> None:
    response = client.post("/nibble/v1/sale", json={}, headers=NIBBLE_AUTH)
    assert (response.status_code, response.json()) == (
        403,
        {"message": "Missing Authentication Token"},
    )


NUDGIFY_FIELD_ERRORS = [
    ({"site_key": None}, "site_key", "Site key is required."),
    ({"site_key": "not-a-uuid"}, "site_key", "Site key must be valid."),
    ({"order": {"email": None}}, "orders.0.email", "Email is required."),
    ({"order": {"email": "leon.gomes"}}, "orders.0.email", "Email does not match the required format [email protected]"),  # noqa: E501
    ({"order": {"date": None}}, "orders.0.date", "Date is required."),
    ({"order": {"date": "2021-04-15T04:29:42Z"}}, "orders.0.date", "Date does not match the required UTC format."),  # noqa: E501
    ({"order": {"country": "U5"}}, "orders.0.country", "Country can only contain letters."),
    ({"order": {"country": "USA"}}, "orders.0.country", "Country may not be greater than 2 characters."),  # noqa: E501
    ({"order": {"order_id": None}}, "orders.0.order_id", "Order id is required."),
    ({"order": {"order_id": "A-1111"}}, "orders.0.order_id", "Order id must be an integer."),
    ({"order": {"order_id": 11.5}}, "orders.0.order_id", "Order id must be an integer."),
]  # fmt: skip


@pytest.mark.parametrize(("change", "field", "message"), NUDGIFY_FIELD_ERRORS)
def test_nudgify_field_errors_are_the_documented_messages_keyed_by_order_index(
    client: httpx.Client, change: dict[str, Any], field: str, message: str
) -> None:
    body = golden("nudgify_purchases.doc-example.json")
    if "site_key" in change:
        body["site_key"] = change["site_key"]
        body = {k: v for k, v in body.items() if v is not None}
    else:
        body["orders"][0] = nudgify_order(**change["order"])
    response = client.post("/nudgify/api/purchases", json=body, headers=NUDGIFY_AUTH)
    assert response.status_code == 400
    assert response.json()["message"] == "Bad Request."
    assert message in response.json()["errors"][field]


def test_nudgify_names_only_the_failing_orders_of_a_batch(client: httpx.Client) -> None:
    body = golden("nudgify_purchases.doc-example.json")
    body["orders"] = [nudgify_order(order_id=1), nudgify_order(order_id=2, email=None),
                      nudgify_order(order_id=3, date=None)]  # fmt: skip
    response = client.post("/nudgify/api/purchases", json=body, headers=NUDGIFY_AUTH)
    assert response.json()["errors"] == {
        "orders.1.email": ["Email is required."],
        "orders.2.date": ["Date is required."],
    }


@pytest.mark.parametrize(
    ("account_state", "site_key", "headers", "status", "message"),
    [
        ("ok", None, {"Authorization": "Bearer wrong"}, 401, "Unauthenticated."),
        ("ok", "00000000-0000-4000-8000-000000000000", NUDGIFY_AUTH, 403,
         "Authorization Failure, Invalid Site Key"),
        ("api_not_enabled", None, NUDGIFY_AUTH, 403, "Forbidden, REST API integration is not enabled"),  # noqa: E501
        ("nudges_not_configured", None, NUDGIFY_AUTH, 403,
         "Please configure the REST API to the nudges in order to use this data"),
        ("api_disabled", None, NUDGIFY_AUTH, 403,
         "REST API integration is disabled on your site. Please contact support"),
        ("lite", None, NUDGIFY_AUTH, 402, "Upgrade your plan to use the REST API"),
    ],
)  # fmt: skip
def test_nudgify_account_and_authentication_errors_are_the_documented_ones(
    client: httpx.Client, account_state: str, site_key: str | None, headers: dict[str, str],
    status: int, message: str,
) -> None:  # fmt: skip
    client.put("/_sandbox/faults/nudgify", json={"account_state": account_state})
    body = golden("nudgify_purchases.doc-example.json")
    body["site_key"] = site_key or body["site_key"]
    response = client.post("/nudgify/api/purchases", json=body, headers=headers)
    assert (response.status_code, response.json()) == (status, {"message": message})


CUSTOBAR_ERRORS = [
    ({"sale_external_id": None}, "sale_external_id is mandatory"),
    ({"product_id": None}, "product_id is mandatory"),
    ({"quantity": None}, "quantity is mandatory"),
    ({"unit_price": None, "sale_total": None}, "unit_price is mandatory for every sale row"),
    ({"unit_price": 12.5}, "unit_price must be an integer amount in cents"),
    ({"sale_state": "CANCELED"}, "sale_state must be one of NEW, PENDING_PAYMENT, PROCESSING, COMPLETE, CANCELLED, CLOSED, HOLDED"),  # noqa: E501
    ({"sale_currency": "USD"}, "sale_currency must be defined together with sale_exchange_rate"),
    ({"sale_exchange_rage": 1.1}, "unknown field 'sale_exchange_rage'"),
    ({"sale_date": "yesterday"}, "sale_date must be a date or an ISO 8601 date and time"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "reason"), CUSTOBAR_ERRORS)
def test_custobar_refuses_a_missing_or_malformed_mandatory_field_with_a_clear_reason(
    client: httpx.Client, change: dict[str, Any], reason: str
) -> None:
    row = {**golden("custobar_sales_upload.doc-example.json")["sales"][0], **change}
    row = {k: v for k, v in row.items() if v is not None}
    response = client.post("/custobar/api/sales/upload/", json={"sales": [row]},
                           headers=CUSTOBAR_AUTH)  # fmt: skip
    assert response.status_code == 400
    assert reason in response.json()["error"]["reason"]


def test_custobar_refuses_wrong_credentials(client: httpx.Client) -> None:
    body = golden("custobar_sales_upload.doc-example.json")
    response = client.post("/custobar/api/sales/upload/", json=body,
                           headers={"Authorization": "Token wrong"})  # fmt: skip
    assert response.status_code == 401
    assert response.json()["error"]["reason"]


# --- faults ----------------------------------------------------------------------------------


def test_a_rate_limited_vendor_answers_429_with_retry_after(client: httpx.Client) -> None:
    client.put("/_sandbox/faults/nudgify", json={"rate_limit_rate": 1, "retry_after_s": 7})
    body = golden("nudgify_purchases.doc-example.json")
    response = client.post("/nudgify/api/purchases", json=body, headers=NUDGIFY_AUTH)
    assert (response.status_code, response.headers["retry-after"]) == (429, "7")
    assert client.get("/_sandbox/stats").json()["nudgify"]["items"] == 0


def test_a_named_order_is_rejected_on_demand_with_the_vendors_own_error(
    client: httpx.Client,
) -> None:
    client.put("/_sandbox/faults/nudgify", json={"reject_orders": ["1111"]})
    body = golden("nudgify_purchases.doc-example.json")
    response = client.post("/nudgify/api/purchases", json=body, headers=NUDGIFY_AUTH)
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["orders.0.email"]


def test_nudgify_answers_its_documented_409_conflict_on_demand(client: httpx.Client) -> None:
    client.put("/_sandbox/faults/nudgify", json={"conflict_rate": 1})
    body = golden("nudgify_purchases.doc-example.json")
    response = client.post("/nudgify/api/purchases", json=body, headers=NUDGIFY_AUTH)
    assert (response.status_code, response.json()) == (
        409,
        {"message": "The request conflicts with another request."},
    )
    stats = client.get("/_sandbox/stats").json()["nudgify"]
    assert (stats["items"], stats["failed_requests"], stats["statuses"]) == (0, 1, {"409": 1})


@pytest.mark.parametrize(
    ("faults", "message"),
    [({"request_failed_rate": 1}, "The parameters were valid but the request failed."),
     ({"account_state": "lite"}, "Upgrade your plan to use the REST API")],
)  # fmt: skip
def test_nudgify_answers_both_documented_402s_a_failed_request_and_the_lite_plan(
    client: httpx.Client, faults: dict[str, Any], message: str
) -> None:
    client.put("/_sandbox/faults/nudgify", json=faults)
    body = golden("nudgify_purchases.doc-example.json")
    response = client.post("/nudgify/api/purchases", json=body, headers=NUDGIFY_AUTH)
    assert (response.status_code, response.json()) == (402, {"message": message})
    assert client.get("/_sandbox/stats").json()["nudgify"]["items"] == 0


VENDOR_POSTS = {
    "nibble": ("/nibble/v1/sales", "nibble_report_sale.doc-example.json", NIBBLE_AUTH),
    "nudgify": ("/nudgify/api/purchases", "nudgify_purchases.doc-example.json", NUDGIFY_AUTH),
    "custobar": ("/custobar/api/sales/upload/", "custobar_sales_upload.doc-example.json",
                 CUSTOBAR_AUTH),
}  # fmt: skip


def post_example(client: httpx.Client, vendor: str) -> httpx.Response:
    path, example, headers = VENDOR_POSTS[vendor]
    return client.post(path, json=golden(example), headers=headers)


@pytest.mark.parametrize("vendor", VENDOR_POSTS)
@pytest.mark.parametrize("status", [301, 307])
def test_a_redirecting_vendor_answers_with_a_location_and_records_nothing(
    client: httpx.Client, vendor: str, status: int
) -> None:
    client.put(f"/_sandbox/faults/{vendor}", json={"redirect_status": status})
    response = post_example(client, vendor)
    assert response.status_code == status
    assert response.headers["location"].endswith(f"/moved{VENDOR_POSTS[vendor][0]}")
    assert client.get(f"/_sandbox/records/{vendor}").json() == []


@pytest.mark.parametrize("vendor", VENDOR_POSTS)
def test_an_echoing_vendor_puts_the_request_body_into_its_own_400_error(
    client: httpx.Client, vendor: str
) -> None:
    client.put(f"/_sandbox/faults/{vendor}", json={"echo_request": True})
    response = post_example(client, vendor)
    assert response.status_code == 400
    message = {
        "nibble": lambda b: b["errorMessage"],
        "nudgify": lambda b: b["errors"]["orders.0"][0],
        "custobar": lambda b: b["error"]["reason"],
    }[vendor](response.json())
    sent = json.loads(message.removeprefix("Invalid request: "))
    assert sent == golden(VENDOR_POSTS[vendor][1])
    assert client.get(f"/_sandbox/records/{vendor}").json() == []


def test_a_flooding_vendor_answers_its_error_status_with_a_body_of_that_size(
    client: httpx.Client,
) -> None:
    client.put("/_sandbox/faults/custobar", json={"huge_body_mb": 0.5, "error_status": 400})
    response = post_example(client, "custobar")
    assert (response.status_code, len(response.content)) == (400, 512 * 1024)
    assert client.get("/_sandbox/records/custobar").json() == []


def test_a_dripping_vendor_sends_its_answer_one_byte_at_a_time(client: httpx.Client) -> None:
    client.put("/_sandbox/faults/nibble", json={"drip_s": 0.02})
    path, example, headers = VENDOR_POSTS["nibble"]
    started = time.monotonic()
    with client.stream("POST", path, json=golden(example), headers=headers) as response:
        headers_after = time.monotonic() - started
        body = response.read()
    elapsed = time.monotonic() - started
    assert (response.status_code, json.loads(body)) == (503, {"message": "Service Unavailable"})
    assert headers_after < 0.5  # the status arrives at once; only the body drips
    assert elapsed >= 0.02 * (len(body) - 1)
    assert client.get("/_sandbox/records/nibble").json() == []


@pytest.mark.parametrize(
    "faults",
    [{"redirect_status": 200}, {"conflict_rate": 2}, {"request_failed_rate": -1},
     {"drip_s": -1}, {"huge_body_mb": -0.5}],
)  # fmt: skip
def test_impossible_fault_settings_are_refused(client: httpx.Client, faults: dict) -> None:
    response = client.put("/_sandbox/faults/nudgify", json=faults)
    assert response.status_code == 400
    assert next(iter(faults)) in response.json()["error"]


def test_unknown_fault_settings_are_refused(client: httpx.Client) -> None:
    response = client.put("/_sandbox/faults/nibble", json={"latency": 5})
    assert response.status_code == 400
    assert "latency" in response.json()["error"]


def test_repeated_orders_are_counted_as_duplicates(client: httpx.Client) -> None:
    body = golden("nibble_report_sale.doc-example.json")
    for _ in range(2):
        client.post("/nibble/v1/sales", json=body, headers=NIBBLE_AUTH)
    stats = client.get("/_sandbox/stats").json()["nibble"]
    # The example's two sales share order number ZY2314: four sales, one order, three repeats.
    assert (stats["items"], stats["distinct"], stats["duplicates"]) == (4, 1, 3)


# --- what our transforms make is accepted ----------------------------------------------------


def _post_all(client: httpx.Client, order: Order) -> None:
    sale = nibble.sale(order, report_all_sales=True)
    if isinstance(sale, Payload):
        response = client.post("/nibble/v1/sales", json={"sales": list(sale.items)},
                               headers=NIBBLE_AUTH)  # fmt: skip
        assert response.status_code == 200, response.text
    purchase = nudgify.purchase(order)
    if isinstance(purchase, Payload):
        body = nudgify.request_body(CREDS.nudgify_site_key, list(purchase.items))
        response = client.post("/nudgify/api/purchases", json=body, headers=NUDGIFY_AUTH)
        assert response.status_code == 200, response.text
    rows = custobar.rows(order, default_currency="EUR", company="COMPANY")
    if isinstance(rows, Payload):
        body = custobar.request_body(list(rows.items))
        response = client.post("/custobar/api/sales/upload/", json=body, headers=CUSTOBAR_AUTH)
        assert response.status_code == 200, response.text


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(order=orders())
def test_every_payload_our_transforms_make_is_accepted(client: httpx.Client, order: Order) -> None:
    _post_all(client, order)


def test_the_custobar_rows_we_send_are_complete_transactions(client: httpx.Client) -> None:
    from consumer.decode import to_order
    from consumer.devenv.samples import sample_orders

    for record in sample_orders(60, seed=3):
        _post_all(client, to_order(record))
    stats = client.get("/_sandbox/stats").json()
    assert stats["custobar"]["incomplete"] == 0
    assert stats["custobar"]["accepted_requests"] > 50
