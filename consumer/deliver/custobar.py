"""Custobar sales upload client: `POST /api/sales/upload/`, one row per line item.

Authentication: `Authorization: Token <t>` (default), `Bearer <key>`, or HTTP Basic.

| status | meaning | action |
|---|---|---|
| 200, 201 | uploaded (`{"response": "ok"}`) | delivered |
| 400 | `{"error": {"reason": ...}}`, no row index | rejected: bisect to isolate the order |
| | the client can rely on | |
| 401, 403 | token/user refused | pause destination (credentials) |
| 404, 405 | wrong company host or path | pause destination (configuration) |
| 408, 425, 429, 5xx, network errors || retry with backoff, honour Retry-After |
A re-upload of a sale updates it server-side, so a changed order (e.g. later cancelled) is sent
again (`resend_changed`); an identical one is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from consumer.deliver.destination import Outbound
from consumer.deliver.http import error_text, misconfigured, post_json
from consumer.errors import CredentialsError, RejectedError
from consumer.model import Order, TransformResult
from consumer.transform import custobar


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
        body = custobar.request_body([row for outbound in batch for row in outbound.items])
        headers = {**self._auth, "Idempotency-Key": idempotency_key}
        response = await post_json(self._client, "/api/sales/upload/", body, headers=headers)
        status = response.status_code
        if status in (200, 201):
            return
        message = error_text(response, "error.reason", "error", "detail", "message")
        if status in (401, 403):
            raise CredentialsError(f"Custobar refused the credentials: {message}", status=status)
        if status in (404, 405):
            raise misconfigured(response, "Custobar endpoint not found; check the company host")
        raise RejectedError(message, status=status)

    async def aclose(self) -> None:
        await self._client.aclose()
