"""Nudgify purchases client: `POST /api/purchases`, Bearer API key, `site_key` in the body.

| status | meaning (Nudgify doc) | action |
|---|---|---|
| 200 | request saved | delivered |
| 400 | field errors keyed `orders.N.field` | dead-letter exactly orders N, resend rest|
| 400 | errors not naming an order (site key) | pause destination (configuration) |
| 401 | Unauthenticated (bad API key) | pause destination (credentials) |
| 402 | "Upgrade your plan to use the REST API" | pause destination (account) |
| 403 | invalid site key / REST API not enabled | pause destination (account) |
| 404 | resource does not exist | pause destination (configuration) |
| 409 | "conflicts with another request": undocumented | retry with backoff: the doc gives no |
| | | ground to treat it as delivered |
| 429 | too many requests | retry, honouring Retry-After |
| 5xx | Nudgify's side | retry with backoff |
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import httpx

from consumer.deliver.destination import Outbound
from consumer.deliver.http import error_text, json_body, misconfigured, post_json
from consumer.errors import CredentialsError, RejectedError, TransientError
from consumer.model import Order, TransformResult
from consumer.transform import nudgify

ORDER_FIELD = re.compile(r"^orders\.(\d+)(?:\.|$)")


class NudgifyDestination:
    name = "nudgify"
    resend_changed = False

    def __init__(
        self, client: httpx.AsyncClient, *, api_key: str, site_key: str, batch_size: int
    ) -> None:
        self._client = client
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._site_key = site_key
        self.max_batch = batch_size

    def transform(self, order: Order) -> TransformResult:
        return nudgify.purchase(order)

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        body = nudgify.request_body(self._site_key, [o.items[0] for o in batch])
        headers = {**self._auth, "Idempotency-Key": idempotency_key}
        response = await post_json(self._client, "/api/purchases", body, headers=headers)
        status = response.status_code
        if status == 200:
            return
        message = error_text(response, "message")
        if status == 400:
            raise _field_errors(response, message, len(batch))
        if status in (401, 402, 403):
            raise CredentialsError(f"Nudgify refused the account: {message}", status=status)
        if status == 409:
            raise TransientError(f"Nudgify conflict: {message}", status=409)
        if status == 404:
            raise misconfigured(response, "Nudgify endpoint not found; check the base URL")
        raise RejectedError(message, status=status)

    async def aclose(self) -> None:
        await self._client.aclose()


def _field_errors(response: httpx.Response, message: str, size: int) -> Exception:
    body = json_body(response)
    errors = body.get("errors") if isinstance(body, dict) else None
    culprits: dict[int, list[str]] = {}
    other: list[str] = []
    for key, texts in (errors or {}).items():
        text = "; ".join(texts) if isinstance(texts, list) else str(texts)
        match = ORDER_FIELD.match(str(key))
        if match and int(match.group(1)) < size:
            culprits.setdefault(int(match.group(1)), []).append(f"{key}: {text}")
        else:
            other.append(f"{key}: {text}")
    if other:
        # site_key or envelope errors: no order is at fault; the configuration is.
        return CredentialsError(f"Nudgify rejected the request: {'; '.join(other)}", status=400)
    if culprits:
        return RejectedError(
            message, status=400, culprits={i: "; ".join(t) for i, t in culprits.items()}
        )
    return RejectedError(message, status=400)
