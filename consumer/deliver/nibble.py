"""Nibble report-sale client: `POST /v1/sales`, at most 50 sales, X-Api-Key + X-Nibble-Api-Secret.

| status | meaning (Nibble doc) | action |
|---|---|---|
| 200 | sales recorded | delivered |
| 400 | `{"errorMessage": ...}`, names no sale | rejected: bisect to isolate the order |
| 401 | key/secret missing, invalid or expired | pause destination (credentials) |
| 403 | API gateway "Missing Authentication Token" | pause destination (credentials) |
| 404/405| wrong base URL | pause destination (configuration) |
| 408, 425, 429, 5xx, network errors || retry with backoff, honour Retry-After |
Gateway errors may carry `{"message": ...}` instead of `{"errorMessage": ...}`: both are read.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from consumer.deliver.destination import Outbound
from consumer.deliver.http import error_text, misconfigured, post_json
from consumer.errors import CredentialsError, RejectedError
from consumer.model import Order, TransformResult
from consumer.transform import nibble

MAX_SALES_PER_REQUEST = 50


class NibbleDestination:
    name = "nibble"
    resend_changed = False

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_key: str,
        api_secret: str,
        report_all_sales: bool,
        batch_size: int = MAX_SALES_PER_REQUEST,
    ) -> None:
        self._client = client
        self._auth = {"X-Api-Key": api_key, "X-Nibble-Api-Secret": api_secret}
        self._report_all_sales = report_all_sales
        self.max_batch = min(batch_size, MAX_SALES_PER_REQUEST)

    def transform(self, order: Order) -> TransformResult:
        return nibble.sale(order, report_all_sales=self._report_all_sales)

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        body = {"sales": [item for outbound in batch for item in outbound.items]}
        headers = {**self._auth, "Idempotency-Key": idempotency_key}
        response = await post_json(self._client, "/v1/sales", body, headers=headers)
        if response.status_code == 200:
            return
        message = error_text(response, "errorMessage", "message")
        if response.status_code in (401, 403):
            raise CredentialsError(f"Nibble refused the credentials: {message}", status=401)
        if response.status_code in (404, 405):
            raise misconfigured(response, "Nibble endpoint not found; check the base URL")
        raise RejectedError(message, status=response.status_code)

    async def aclose(self) -> None:
        await self._client.aclose()
