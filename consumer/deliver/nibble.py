"""Nibble report-sale client: `POST /v1/sales`, at most 50 sales, X-Api-Key + X-Nibble-Api-Secret.

Every status is classified; the doc defines 200, 400 and 401, NOTES.md adds the API gateway's
403/429/5xx with `{"message": ...}` instead of `{"errorMessage": ...}` (both are read).

| status | meaning | action |
|---|---|---|
| 200 (201, 202, 204) | sales recorded | delivered |
| 400 | `{"errorMessage": ...}`, names no sale | rejected: bisect to isolate the order |
| 413 | request too large | rejected: bisect (halves are smaller; one order alone → DLQ) |
| 422 | content refused | rejected: bisect, as 400 |
| 401 | key/secret missing, invalid or expired | pause (credentials) |
| 402, 403 | account / gateway "Missing Authentication Token" | pause (credentials) |
| 408, 425, 429, 5xx | transient | retry with backoff, at least Retry-After |
| 501, 505, 511 | not implemented / HTTP version / network login | pause (misconfigured) |
| 3xx | redirect, never followed | pause (misconfigured) |
| 404, 405, 410, anything else | not Nibble's API as documented | pause (misconfigured) |
| network error, no complete answer in time | transient | retry with backoff |
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from consumer.deliver.destination import Outbound, json_document
from consumer.deliver.http import SUCCESS_STATUSES, error_text, misconfigured, post_json
from consumer.errors import CredentialsError, RejectedError
from consumer.model import Order, TransformResult
from consumer.transform import nibble

MAX_SALES_PER_REQUEST = 50
REJECTED_STATUSES = frozenset({400, 413, 422})
CREDENTIALS_STATUSES = frozenset({401, 402, 403})


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
        body = json_document(b'{"sales":[', batch)
        headers = {**self._auth, "Idempotency-Key": idempotency_key}
        answer = await post_json(self._client, "/v1/sales", body, headers=headers)
        status = answer.status
        if status in SUCCESS_STATUSES:
            return
        sent = [outbound.items for outbound in batch]
        message = error_text(answer, "errorMessage", "message", sent=sent)
        if status in REJECTED_STATUSES:
            raise RejectedError(message, status=status)
        if status in CREDENTIALS_STATUSES:
            raise CredentialsError(f"Nibble refused the credentials: {message}", status=status)
        raise misconfigured(answer, "Nibble", message)

    async def aclose(self) -> None:
        await self._client.aclose()
