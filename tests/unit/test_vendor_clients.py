"""What each vendor client does with each answer a vendor can give (over httpx.MockTransport):
delivered, retried, failed a bounded number of times, rejected (which orders), or paused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.deliver.custobar import CustobarDestination
from consumer.deliver.destination import Outbound
from consumer.deliver.http import MESSAGE_CHARS, build_client, retry_after_seconds
from consumer.deliver.nibble import NibbleDestination
from consumer.deliver.nudgify import NudgifyDestination
from consumer.deliver.retry import RETRY_AFTER_CAP_S
from consumer.errors import (
    CredentialsError,
    DeliveryError,
    FailedRequestError,
    MisconfiguredError,
    PauseError,
    RejectedError,
    TransientError,
)
from consumer.model import Payload

Handler = Callable[[httpx.Request], httpx.Response]
NOW = datetime(1994, 11, 6, 8, 49, 0, tzinfo=UTC)


class Vendor:
    """A MockTransport vendor that answers every request with `answer` and counts requests."""

    def __init__(self, answer: httpx.Response | Handler) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request) if callable(self.answer) else self.answer

    def client(self) -> httpx.AsyncClient:
        return build_client("https://vendor.test", timeout_s=5, concurrency=1,
                            transport=httpx.MockTransport(self))  # fmt: skip


def nibble(vendor: Vendor) -> NibbleDestination:
    return NibbleDestination(vendor.client(), api_key="k", api_secret="s", report_all_sales=True)


def nudgify(vendor: Vendor) -> NudgifyDestination:
    return NudgifyDestination(vendor.client(), api_key="k", site_key="s", batch_size=10)


def custobar(vendor: Vendor) -> CustobarDestination:
    return CustobarDestination(vendor.client(), headers={}, default_currency="EUR",
                               company="C", batch_size=10)  # fmt: skip


CLIENTS = {"nibble": nibble, "nudgify": nudgify, "custobar": custobar}


def batch(size: int = 3) -> list[Outbound]:
    return [
        Outbound.of(str(n), Payload(({"order_id": n, "email": f"leon{n}@example.com",
                                      "first_name": "Leon", "last_name": "Gomes",
                                      "city": "Los Angeles"},)))
        for n in range(1, size + 1)
    ]  # fmt: skip


def send(destination, size: int = 3) -> None:
    async def run() -> None:
        try:
            await destination.send(batch(size), idempotency_key="key")
        finally:
            await destination.aclose()

    asyncio.run(run())


def outcome(destination, size: int = 3) -> DeliveryError | None:
    try:
        send(destination, size)
    except DeliveryError as exc:
        return exc
    return None


def answer(status: int, body: object = None, **headers: str) -> httpx.Response:
    """`body`: raw bytes/str as they are, None for no body, anything else as JSON."""
    if body is None:
        return httpx.Response(status, headers=headers)
    if isinstance(body, bytes | str):
        return httpx.Response(status, content=body, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


# --- the two crashes this suite started from ------------------------------------------------


def test_a_nudgify_400_whose_errors_are_a_list_is_a_rejection_not_a_crash():
    body = {"message": "Bad Request.", "errors": ["Email is required."]}
    error = outcome(nudgify(Vendor(answer(400, body))))
    assert isinstance(error, RejectedError)
    assert error.culprits == {}  # names no order: the worker bisects
    assert "Email is required." in error.message


def test_a_retry_after_date_ending_in_minus_0000_is_honoured_not_a_crash():
    far = {"Retry-After": "Sun, 06 Nov 2094 08:49:37 -0000"}
    error = outcome(nudgify(Vendor(answer(503, None, **far))))
    assert isinstance(error, TransientError)
    assert error.retry_after == RETRY_AFTER_CAP_S  # a century away: capped, not ignored


# --- each vendor's status table -------------------------------------------------------------

COMMON = [
    (200, None), (201, None), (202, None), (204, None),
    (203, MisconfiguredError), (206, MisconfiguredError), (207, MisconfiguredError),
    (301, MisconfiguredError), (302, MisconfiguredError), (303, MisconfiguredError),
    (307, MisconfiguredError), (308, MisconfiguredError),
    (404, MisconfiguredError), (405, MisconfiguredError), (410, MisconfiguredError),
    (406, MisconfiguredError), (415, MisconfiguredError), (418, MisconfiguredError),
    (408, TransientError), (425, TransientError), (429, TransientError),
    (500, TransientError), (502, TransientError), (503, TransientError), (504, TransientError),
    (599, TransientError),
    (501, MisconfiguredError), (505, MisconfiguredError), (511, MisconfiguredError),
    (413, RejectedError),
    (600, MisconfiguredError), (999, MisconfiguredError),
]  # fmt: skip
OWN = {
    "nibble": [(400, RejectedError), (422, RejectedError), (401, CredentialsError),
               (402, CredentialsError), (403, CredentialsError), (409, MisconfiguredError)],
    "custobar": [(400, RejectedError), (422, RejectedError), (401, CredentialsError),
                 (402, CredentialsError), (403, CredentialsError), (409, MisconfiguredError)],
    "nudgify": [(400, RejectedError), (422, RejectedError), (401, CredentialsError),
                (402, FailedRequestError), (403, CredentialsError), (409, FailedRequestError)],
}  # fmt: skip
TABLE = [(vendor, status, kind) for vendor, own in OWN.items() for status, kind in COMMON + own]


@pytest.mark.parametrize(("vendor", "status", "kind"), TABLE)
def test_every_status_is_classified_as_the_clients_table_says(vendor, status, kind):
    error = outcome(CLIENTS[vendor](Vendor(answer(status, {"message": "something"}))))
    if kind is None:
        assert error is None
    else:
        assert type(error) is kind, error
        assert error.status == status


@pytest.mark.parametrize("vendor", CLIENTS)
@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_never_followed_and_pauses_with_where_it_pointed(vendor, status):
    location = "https://user:hunter22@elsewhere.example:8443/api/sales?token=abc"
    fake = Vendor(answer(status, None, Location=location))
    error = outcome(CLIENTS[vendor](fake))
    assert isinstance(error, MisconfiguredError)
    assert len(fake.requests) == 1
    assert "https://elsewhere.example:8443" in error.message
    assert "hunter22" not in error.message
    assert "token=abc" not in error.message


def test_nibble_403_keeps_its_own_status():
    error = outcome(nibble(Vendor(answer(403, {"message": "Missing Authentication Token"}))))
    assert isinstance(error, CredentialsError)
    assert (error.status, "Missing Authentication Token" in error.message) == (403, True)


# --- Nudgify's documented specials ----------------------------------------------------------


def test_a_nudgify_409_is_a_failed_request_of_class_conflict_never_an_endless_retry():
    body = {"message": "The request conflicts with another request."}
    error = outcome(nudgify(Vendor(answer(409, body, **{"Retry-After": "3"}))))
    assert isinstance(error, FailedRequestError)
    assert not isinstance(error, TransientError | PauseError)
    assert (error.error_class, error.status, error.retry_after) == ("conflict", 409, 3.0)
    assert "conflicts with another request" in error.message


@pytest.mark.parametrize(
    "message",
    ["Upgrade your plan to use the REST API", "Forbidden, REST API integration is not enabled",
     "REST API integration is disabled on your site. Please contact support",
     "Please configure the REST API to the nudges in order to use this data"],
)  # fmt: skip
def test_a_nudgify_402_about_the_plan_or_the_rest_api_pauses_for_the_account(message):
    error = outcome(nudgify(Vendor(answer(402, {"message": message}))))
    assert isinstance(error, CredentialsError)
    assert message in error.message


@pytest.mark.parametrize(
    "body",
    [{"message": "The parameters were valid but the request failed."},
     {"message": "Request Failed"}, None, b"<html>402</html>"],
)  # fmt: skip
def test_any_other_nudgify_402_is_a_failed_request_not_a_pause(body):
    error = outcome(nudgify(Vendor(answer(402, body))))
    assert isinstance(error, FailedRequestError)
    assert error.error_class == "request_failed"


@pytest.mark.parametrize("status", [400, 422])
def test_nudgify_field_errors_name_exactly_the_failing_orders(status):
    errors = {"orders.0.email": ["Email is required."], "orders.2.date": ["Date is required."]}
    error = outcome(nudgify(Vendor(answer(status, {"message": "Bad Request.", "errors": errors}))))
    assert isinstance(error, RejectedError)
    assert error.culprits == {0: "orders.0.email: Email is required.",
                              2: "orders.2.date: Date is required."}  # fmt: skip


@pytest.mark.parametrize(
    ("errors", "culprits"),
    [
        ({"orders": {"1": {"email": ["Email is required."]}}},
         {1: "orders.1.email: Email is required."}),
        ([{"orders.0.date": "Date is required."}], {0: "orders.0.date: Date is required."}),
        ({"orders.0.email": [{"rule": "email", "text": "bad"}, 7]},
         {0: "orders.0.email: rule: email; text: bad; 7"}),
        ({"orders.1": "Order must be an object."}, {1: "orders.1: Order must be an object."}),
        ({"orders.9.email": ["not in this batch"]}, {}),
        ({"orders.99999999999999999999.email": ["absurd index"]}, {}),
        (["Email is required.", 42, None, [["deep"]]], {}),
        ("Bad things", {}), (17, {}), (None, {}), ({}, {}), ([], {}),
    ],
)  # fmt: skip
def test_nudgify_errors_of_any_shape_name_the_orders_they_can_and_bisect_the_rest(errors, culprits):
    error = outcome(nudgify(Vendor(answer(400, {"message": "Bad Request.", "errors": errors}))))
    assert isinstance(error, RejectedError)
    assert error.culprits == culprits


@pytest.mark.parametrize(
    "errors",
    [{"site_key": ["Site key must be valid."]}, {"orders": ["Orders is required."]},
     {"site_key": ["Site key is required."], "orders.0.email": ["Email is required."]}],
)  # fmt: skip
def test_nudgify_errors_about_the_request_itself_pause_instead_of_blaming_an_order(errors):
    error = outcome(nudgify(Vendor(answer(400, {"message": "Bad Request.", "errors": errors}))))
    assert isinstance(error, MisconfiguredError)


# --- bodies of any shape --------------------------------------------------------------------

ODD_BODIES = [
    b"", b"null", b"[]", b'["a", "b"]', b'"just a string"', b"42", b"{", b"<html>Bad</html>",
    b"\xff\xfe\x00garbage", b"[" * 30000 + b"]" * 30000, b'{"errorMessage": {"nested": [1]}}',
    b'{"error": "flat"}', b'{"error": {"reason": ["two", "reasons"]}}', b'{"message": null}',
    b"1" * 5000,
]  # fmt: skip


@pytest.mark.parametrize("vendor", CLIENTS)
@pytest.mark.parametrize("body", ODD_BODIES)
def test_an_odd_400_body_is_still_a_rejection_with_a_short_message(vendor, body):
    error = outcome(CLIENTS[vendor](Vendor(answer(400, body))))
    assert isinstance(error, RejectedError)
    assert 0 < len(error.message) <= MESSAGE_CHARS


@pytest.mark.parametrize(
    ("body", "message"),
    [({"errorMessage": "order_number must be specified"}, "order_number must be specified"),
     ({"message": "Gateway says no"}, "Gateway says no"),
     ({"error": {"reason": "sale 1000: bad"}}, "sale 1000: bad"),
     ({"error": {"reason": ["two", "reasons"]}}, "two; reasons")],
)  # fmt: skip
def test_the_vendors_own_message_is_what_the_rejection_says(body, message):
    vendor = "custobar" if "error" in body else "nibble"
    assert outcome(CLIENTS[vendor](Vendor(answer(400, body)))).message == message


@pytest.mark.parametrize("vendor", CLIENTS)
def test_a_vendor_echoing_the_request_back_leaks_no_personal_data_into_the_error(vendor):
    def echo(request: httpx.Request) -> httpx.Response:
        text = request.content.decode()
        escaped = json.dumps(json.loads(text))  # ASCII-escaped, as a re-serialising vendor would
        return answer(400, {"message": f"Invalid: {text} {escaped}",
                            "errorMessage": f"Invalid: {text}",
                            "error": {"reason": f"Invalid: {text}"},
                            "errors": {"orders.0.email": [f"Invalid: {text}"]}})  # fmt: skip

    error = outcome(CLIENTS[vendor](Vendor(echo)))
    texts = [error.message, *getattr(error, "culprits", {}).values()]
    for text in texts:
        for personal in ("leon1@example.com", "Leon", "Gomes", "Los Angeles"):
            assert personal not in text, text


# --- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("0", 0.0),
        ("Sun, 06 Nov 1994 08:49:37 GMT", 37.0),  # IMF-fixdate
        ("Sunday, 06-Nov-94 08:49:37 GMT", 37.0),  # RFC 850
        ("Sun Nov  6 08:49:37 1994", 37.0),  # asctime
        ("Sun, 06 Nov 1994 08:49:37 -0000", 37.0),
        ("Sun, 06 Nov 1994 08:49:37 +0000", 37.0),
        ("Sun, 06 Nov 1994 10:49:37 +0200", 37.0),
        ("Sun, 06 Nov 1994 08:00:00 GMT", 0.0),  # in the past: retry now
        ("99999999999", RETRY_AFTER_CAP_S),
        ("Sun, 06 Nov 9999 08:49:37 GMT", RETRY_AFTER_CAP_S),
    ],
)  # fmt: skip
def test_every_retry_after_form_is_read(value, seconds):
    assert retry_after_seconds(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "soon", "-5", "+5", "1e3", "nan", "inf", "Infinity", "0x10", "1,5", "5 seconds",
     "Sun, 32 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT",
     "Sun, 06 Nov 99999 08:49:37 GMT", "Mon, 99 Foo 2024", "\x00", "9" * 400],
)  # fmt: skip
def test_a_retry_after_that_says_nothing_usable_is_ignored(value):
    assert retry_after_seconds(value, now=NOW) is None


# --- whatever a vendor answers, only DeliveryErrors come out ---------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=20,
)  # fmt: skip
error_keys = st.sampled_from(["orders.0.email", "orders.1", "orders.7.date", "site_key",
                              "orders", "orders.x", "", "errors"])  # fmt: skip
documented_shapes = st.fixed_dictionaries(
    {},
    optional={
        "message": json_values, "errorMessage": json_values, "error": json_values,
        "errors": st.dictionaries(error_keys, json_values, max_size=4) | json_values,
    },
)  # fmt: skip
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    documented_shapes.map(lambda v: json.dumps(v).encode()),
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
retry_afters = st.one_of(
    header_text, st.floats(allow_nan=True).map(str), st.integers().map(str),
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S -0000")),
    st.datetimes().map(lambda d: d.strftime("%A, %d-%b-%y %H:%M:%S GMT")),
    st.datetimes().map(lambda d: d.strftime("%a %b %d %H:%M:%S %Y")),
)  # fmt: skip
headers = st.fixed_dictionaries(
    {},
    optional={
        "retry-after": retry_afters,
        "content-type": st.sampled_from(["application/json", "text/html; charset=latin-1",
                                         "application/json; charset=bogus", "text/plain;;="]),
        "content-encoding": st.sampled_from(["gzip", "br", "deflate", "identity", "x-odd"]),
        "location": header_text,
    },
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vendor=st.sampled_from(sorted(CLIENTS)),
    status=st.integers(100, 999),
    headers=headers,
    body=bodies,
    size=st.integers(1, 5),
)
def test_whatever_a_vendor_answers_the_client_raises_only_a_delivery_error(
    vendor, status, headers, body, size
):
    def respond(request: httpx.Request) -> httpx.Response:
        # A stream, as from the network: the body is decoded (or fails to) when it is read.
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))

    error = outcome(CLIENTS[vendor](Vendor(respond)), size)
    if error is None:
        assert status in (200, 201, 202, 204)
        return
    assert len(error.message) <= 2 * MESSAGE_CHARS
    if 300 <= status < 400:
        assert isinstance(error, MisconfiguredError)
    if isinstance(error, TransientError) and error.retry_after is not None:
        assert 0 <= error.retry_after <= RETRY_AFTER_CAP_S
    if isinstance(error, RejectedError):
        assert set(error.culprits) <= set(range(size))


# --- the bytes sent -------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", sorted(CLIENTS))
def test_each_body_is_the_documented_document_of_the_entries_serialised_once(vendor):
    from consumer.transform import custobar as custobar_rows
    from consumer.transform import nudgify as nudgify_orders

    recorder = Vendor(answer(200, {"response": "ok"}))
    send(CLIENTS[vendor](recorder), 3)
    (request,) = recorder.requests
    entries = [item for outbound in batch(3) for item in outbound.items]
    expected = {
        "nibble": {"sales": entries},
        "nudgify": nudgify_orders.request_body("s", entries),
        "custobar": custobar_rows.request_body(entries),
    }[vendor]
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == expected
    # The bytes the ledger's hash covers are the bytes on the wire.
    for outbound in batch(3):
        for encoded in outbound.encoded:
            assert encoded in request.content


@pytest.mark.parametrize("vendor", CLIENTS)
def test_an_echoed_value_with_odd_whitespace_is_scrubbed_too(vendor):
    """The error is made one line (whitespace collapsed): "Mary  Jane" and "Saint Denis" with a
    non-breaking space must be recognised in that form as well."""
    odd = {"first_name": "Mary  Jane", "city": "Saint\u00a0Denis", "last_name": "Brightwater",
           "email": "mary@example.com", "order_id": 1}  # fmt: skip

    def echo(request: httpx.Request) -> httpx.Response:
        text = request.content.decode()
        return answer(400, {"message": f"Invalid: {text}", "errorMessage": f"Invalid: {text}",
                            "error": {"reason": f"Invalid: {text}"},
                            "errors": {"orders.0.email": [f"Invalid: {text}"]}})  # fmt: skip

    destination = CLIENTS[vendor](Vendor(echo))

    async def run() -> DeliveryError:
        try:
            await destination.send([Outbound.of("1", Payload((odd,)))], idempotency_key="k")
        except DeliveryError as exc:
            return exc
        finally:
            await destination.aclose()
        raise AssertionError("the echo was accepted")

    error = asyncio.run(run())
    for text in [error.message, *getattr(error, "culprits", {}).values()]:
        for personal in ("Mary Jane", "Mary  Jane", "Saint Denis", "Saint\u00a0Denis"):
            assert personal not in text, text
