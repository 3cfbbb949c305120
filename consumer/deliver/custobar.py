"""Custobar sales upload client: `POST /api/sales/upload/`, one row per line item.

Authentication: `Authorization: Token <t>` (default), `Bearer <key>`, or HTTP Basic.

Every status is classified; the doc defines none, so NOTES.md (the official plugins) and HTTP's
own meanings decide:

| status | meaning | action |
|---|---|---|
| 200, 201 (202, 204) | uploaded (`{"response": "ok"}`) | delivered |
| 400 | `{"error": {"reason": ...}}`, no row index | rejected: bisect to isolate the order |
| 413 | request too large | rejected: bisect (halves are smaller; one order alone → DLQ) |
| 422 | content refused | rejected: bisect, as 400 |
| 401, 403 | token/user refused | pause (credentials) |
| 402 | account (payment) | pause (credentials) |
| 408, 425, 429, 5xx | transient | retry with backoff, at least Retry-After |
| 501, 505, 511 | not implemented / HTTP version / network login | pause (misconfigured) |
| 3xx | redirect, never followed | pause (misconfigured) |
| 404, 405, 410, anything else | wrong company host or path | pause (misconfigured) |
| network error, no complete answer in time | transient | retry with backoff |

A re-upload of a sale updates it server-side, so a changed order (e.g. later cancelled) is sent
again (`resend_changed`); an identical one is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from consumer.deliver.destination import Outbound, json_document
from consumer.deliver.http import SUCCESS_STATUSES, error_text, misconfigured, post_json
from consumer.errors import CredentialsError, RejectedError
from consumer.model import Order, TransformResult
from consumer.transform import custobar

REJECTED_STATUSES = frozenset({400, 413, 422})
CREDENTIALS_STATUSES = frozenset({401, 402, 403})


def auth_header(kind: str, *, token: str | None) -> dict[str, str]:
    if kind == "token":
        return {"Authorization": f"Token {token}"}
    if kind == "bearer":
        return {"Authorization": f"Bearer {token}"}
    return {}  # basic: httpx.BasicAuth on the client


class CustobarDestination:
    name = "custobar"
    resend_changed = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        headers: dict[str, str],
        default_currency: str,
        company: str,
        batch_size: int,
    ) -> None:
        self._client = client
        self._auth = headers
        self._default_currency = default_currency
        self._company = company
        self.max_batch = batch_size

    def transform(self, order: Order) -> TransformResult:
        return custobar.rows(order, default_currency=self._default_currency, company=self._company)

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        body = json_document(b'{"sales":[', batch)  # custobar.request_body's shape
        headers = {**self._auth, "Idempotency-Key": idempotency_key}
        answer = await post_json(self._client, "/api/sales/upload/", body, headers=headers)
        status = answer.status
        if status in SUCCESS_STATUSES:
            return
        sent = [outbound.items for outbound in batch]
        message = error_text(answer, "error.reason", "error", "detail", "message", sent=sent)
        if status in REJECTED_STATUSES:
            raise RejectedError(message, status=status)
        if status in CREDENTIALS_STATUSES:
            raise CredentialsError(f"Custobar refused the credentials: {message}", status=status)
        raise misconfigured(answer, "Custobar", message)

    async def aclose(self) -> None:
        await self._client.aclose()
