"""Our vendor clients against the sandbox's faults over loopback: what the fault suite relies on
(a redirect pauses, a drip times out, a flood is cut off, an echo leaks nothing, Nudgify's 409
and 402s are failed requests or an account pause)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from consumer.deliver.custobar import CustobarDestination, auth_header
from consumer.deliver.destination import Destination, Outbound
from consumer.deliver.http import MESSAGE_CHARS, build_client
from consumer.deliver.nibble import NibbleDestination
from consumer.deliver.nudgify import NudgifyDestination
from consumer.errors import (
    CredentialsError,
    DeliveryError,
    FailedRequestError,
    MisconfiguredError,
    RejectedError,
    TransientError,
)
from consumer.model import Payload
from consumer.sandbox.control import SandboxControl, run_sandbox_in_thread
from consumer.sandbox.settings import SandboxSettings
from tests.factories import make_customer, make_order

pytestmark = pytest.mark.integration

CREDS = SandboxSettings()
VENDORS = ("nibble", "nudgify", "custobar")
CUSTOMER = make_customer(email="leon.gomes@example.com", first_name="Leonora",
                         last_name="Gomes-Varga", phone="+358401234567")  # fmt: skip
PERSONAL = ("leon.gomes@example.com", "Leonora", "+358401234567", "92.21.8.106", "sess-0001")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with run_sandbox_in_thread(CREDS) as base:
        yield base


@pytest.fixture
def sandbox(url: str) -> Iterator[SandboxControl]:
    control = SandboxControl(url)
    control.reset()
    yield control
    control.reset()
    control.close()


def destination(url: str, vendor: str, *, timeout_s: float = 5) -> Destination:
    def client(prefix: str) -> httpx.AsyncClient:
        return build_client(f"{url}/{prefix}", timeout_s=timeout_s, concurrency=1)

    if vendor == "nibble":
        return NibbleDestination(client("nibble"), api_key=CREDS.nibble_api_key,
                                 api_secret=CREDS.nibble_api_secret,
                                 report_all_sales=True)  # fmt: skip
    if vendor == "nudgify":
        return NudgifyDestination(client("nudgify"), api_key=CREDS.nudgify_api_key,
                                  site_key=CREDS.nudgify_site_key, batch_size=10)  # fmt: skip
    return CustobarDestination(client("custobar"), default_currency="EUR", company="COMPANY",
                               headers=auth_header("token", token=CREDS.custobar_token),
                               batch_size=10)  # fmt: skip


def send(url: str, vendor: str, orders: int = 3, **options: float) -> DeliveryError | None:
    """Transform `orders` sample orders for `vendor` and send them as one request."""
    target = destination(url, vendor, **options)
    batch = []
    for n in range(1, orders + 1):
        payload = target.transform(make_order(order_number=str(1000 + n), customer=CUSTOMER))
        assert isinstance(payload, Payload), payload
        batch.append(Outbound.of(str(1000 + n), payload))

    async def run() -> DeliveryError | None:
        try:
            await target.send(batch, idempotency_key="key")
        except DeliveryError as exc:
            return exc
        finally:
            await target.aclose()
        return None

    return asyncio.run(run())


@pytest.mark.parametrize("vendor", VENDORS)
def test_without_faults_every_client_delivers(url, sandbox, vendor):
    assert send(url, vendor) is None
    assert sandbox.stats()[vendor]["distinct"] == 3


def test_a_nudgify_conflict_is_a_failed_request_of_class_conflict(url, sandbox):
    sandbox.set_faults("nudgify", conflict_rate=1)
    error = send(url, "nudgify")
    assert isinstance(error, FailedRequestError)
    assert (error.error_class, error.status) == ("conflict", 409)


def test_a_nudgify_request_failed_402_is_a_failed_request_not_a_pause(url, sandbox):
    sandbox.set_faults("nudgify", request_failed_rate=1)
    error = send(url, "nudgify")
    assert isinstance(error, FailedRequestError)
    assert (error.error_class, error.status) == ("request_failed", 402)


@pytest.mark.parametrize(
    ("account_state", "status"),
    [("lite", 402), ("api_not_enabled", 403), ("nudges_not_configured", 403),
     ("api_disabled", 403)],
)  # fmt: skip
def test_a_nudgify_account_problem_pauses_for_the_credentials(url, sandbox, account_state, status):
    sandbox.set_faults("nudgify", account_state=account_state)
    error = send(url, "nudgify")
    assert isinstance(error, CredentialsError)
    assert error.status == status


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_redirect_pauses_and_is_never_followed(url, sandbox, vendor):
    sandbox.set_faults(vendor, redirect_status=308)
    error = send(url, vendor)
    assert isinstance(error, MisconfiguredError)
    assert sandbox.stats()[vendor]["requests"] == 1  # the moved-to URL was never asked


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_dripping_vendor_is_given_up_on_at_the_deadline(url, sandbox, vendor):
    sandbox.set_faults(vendor, drip_s=0.2)  # 35 bytes: 7 s, but each read is quick
    started = time.monotonic()
    error = send(url, vendor, timeout_s=0.5)
    assert isinstance(error, TransientError)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_100_mb_error_body_is_cut_off_and_classified_by_its_status(url, sandbox, vendor):
    sandbox.set_faults(vendor, huge_body_mb=100, error_status=400)
    started = time.monotonic()
    error = send(url, vendor)
    assert isinstance(error, RejectedError)
    assert len(error.message) <= MESSAGE_CHARS
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_vendor_echoing_the_request_leaks_no_personal_data_into_the_rejection(
    url, sandbox, vendor
):
    sandbox.set_faults(vendor, echo_request=True)
    error = send(url, vendor)
    assert isinstance(error, RejectedError)
    assert "Invalid request" in error.message or error.culprits
    for text in (error.message, *error.culprits.values()):
        for value in PERSONAL:
            assert value not in text, (value, text)
