"""`GET /_sandbox/state/{vendor}`: what a vendor account holds after the uploads it accepted."""

from __future__ import annotations

import httpx
import pytest

from consumer.sandbox.control import SandboxControl
from consumer.sandbox.settings import SandboxSettings

pytestmark = pytest.mark.integration
CREDS = SandboxSettings()
CUSTOBAR = {"Authorization": f"Token {CREDS.custobar_token}"}
NIBBLE = {"X-Api-Key": CREDS.nibble_api_key, "X-Nibble-Api-Secret": CREDS.nibble_api_secret}
ROWS = [
    {"sale_external_id": "1000", "sale_customer_id": "A501", "sale_date": "2017-12-01T13:11:23Z",
     "sale_state": "COMPLETE", "sale_total": 5160, "external_id": "1000-1",
     "product_id": "SKU0435", "unit_price": 1200, "quantity": 1, "total": 1200},
    {"sale_external_id": "1000", "external_id": "1000-2", "product_id": "SKU3429",
     "unit_price": 2080, "quantity": 2, "discount": 200, "total": 3960},
]  # fmt: skip
SALE = {"purchase_date_time": "2026-11-27T10:00:00Z", "session_token": "cookie-123",
        "order_number": "SO-1", "currency_code": "GBP", "total_item_price": "130.50",
        "items": [{"product_id": "ABCD", "quantity": 2, "isNibbleAddonItem": False}]}  # fmt: skip


def test_a_re_uploaded_custobar_sale_is_held_once_in_its_latest_state(
    sandbox: SandboxControl, sandbox_url: str
) -> None:
    cancelled = [{**ROWS[0], "sale_state": "CANCELLED"}]
    for body in (ROWS, cancelled):
        response = httpx.post(f"{sandbox_url}/custobar/api/sales/upload/", json={"sales": body},
                              headers=CUSTOBAR)  # fmt: skip
        assert response.status_code == 200, response.text
    held = sandbox.state("custobar")
    assert list(held) == ["1000"]
    assert held["1000"]["transaction"]["sale_state"] == "CANCELLED"
    assert sorted(held["1000"]["rows"]) == ["1000-1", "1000-2"]
    assert len(sandbox.records("custobar")) == 2  # the records still show both uploads


def test_a_nibble_sale_reported_twice_is_held_twice(
    sandbox: SandboxControl, sandbox_url: str
) -> None:
    for _ in range(2):
        response = httpx.post(f"{sandbox_url}/nibble/v1/sales", json={"sales": [SALE]},
                              headers=NIBBLE)  # fmt: skip
        assert response.status_code == 200, response.text
    assert sandbox.state("nibble") == {"SO-1": [SALE, SALE]}
    assert sandbox.state("nudgify") == {}


def test_only_the_three_vendors_have_a_state(sandbox: SandboxControl) -> None:
    with pytest.raises(httpx.HTTPStatusError):
        sandbox.state("registry")
