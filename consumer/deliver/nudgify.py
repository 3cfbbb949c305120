"""Nudgify purchases client: `POST /api/purchases`, Bearer API key, `site_key` in the body.

Every status is classified; the doc defines 200, 400, 401, 402, 403, 404, 409, 429 and 5xx:

| status | meaning (Nudgify doc) | action |
|---|---|---|
| 200 (201, 202, 204) | request saved | delivered |
| 400, 422 | errors keyed `orders.N.field` | dead-letter exactly orders N, send the rest again |
| 400, 422 | errors naming `site_key`/`orders` | pause (misconfigured): no order is at fault |
| 400, 422 | errors naming nothing we can place | rejected: bisect to isolate the order |
| 401 | Unauthenticated (bad API key) | pause (credentials) |
| 402 | "Upgrade your plan to use the REST API" or another REST API/plan message | pause |
| | (credentials): the account, not the orders; they are sent once it is fixed | |
| 402 | any other message: "the parameters were valid but the request failed" | failed request |
| | (`request_failed`): a bounded number of retries, then isolated and dead-lettered | |
| 403 | invalid site key / REST API not enabled or disabled | pause (credentials) |
| 404, 405, 410 | resource does not exist | pause (misconfigured): wrong base URL |
| 409 | "the request conflicts with another request" | failed request (`conflict`): a |
| | bounded number of retries, then isolated and dead-lettered; never an endless retry | |
| 413 | request too large | rejected: bisect (halves are smaller; one order alone → DLQ) |
| 408, 425, 429, 5xx | transient | retry with backoff, at least Retry-After |
| 501, 505, 511 | not implemented / HTTP version / network login | pause (misconfigured) |
| 3xx | redirect, never followed | pause (misconfigured) |
| anything else | not Nudgify's API as documented | pause (misconfigured) |
| network error, no complete answer in time | transient | retry with backoff |

422 is read as 400: it is Laravel's own validation status, with the same `errors` object.
`errors` is read defensively: an object keyed "orders.N.field" (the doc), nested objects
({"orders": {"0": {"email": [...]}}} reads as "orders.0.email"), lists of messages or of such
objects, numbers; whatever cannot be placed on an order of the batch names no culprit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

import httpx
import orjson

from consumer.deliver.destination import Outbound, json_document
from consumer.deliver.http import (
    MAX_DEPTH,
    SUCCESS_STATUSES,
    Answer,
    error_text,
    flatten,
    misconfigured,
    post_json,
    scrubber,
)
from consumer.errors import (
    CredentialsError,
    DeliveryError,
    FailedRequestError,
    MisconfiguredError,
    RejectedError,
)
from consumer.model import JSON, Order, TransformResult
from consumer.transform import nudgify

ORDER_FIELD = re.compile(r"orders\.([0-9]{1,9})(?:\.|$)")
ENVELOPE_FIELDS = ("site_key", "orders")
"""Error keys about the request as a whole: configuration, not an order."""
ACCOUNT_MESSAGES = ("upgrade your plan", "rest api")
"""A 402 whose message says one of these is about the account (the doc's message table)."""
CREDENTIALS_STATUSES = frozenset({401, 403})


class NudgifyDestination:
    name = "nudgify"
    resend_changed = False

    def __init__(
        self, client: httpx.AsyncClient, *, api_key: str, site_key: str, batch_size: int
    ) -> None:
        self._client = client
        self._auth = {"Authorization": f"Bearer {api_key}"}
        self._site_key = site_key
        self._head = b'{"site_key":' + orjson.dumps(site_key) + b',"orders":['
        self.max_batch = batch_size

    def transform(self, order: Order) -> TransformResult:
        return nudgify.purchase(order)

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        body = json_document(self._head, batch)  # nudgify.request_body's shape
        headers = {**self._auth, "Idempotency-Key": idempotency_key}
        answer = await post_json(self._client, "/api/purchases", body, headers=headers)
        status = answer.status
        if status in SUCCESS_STATUSES:
            return
        sent = [outbound.items for outbound in batch]
        message = error_text(answer, "message", "errors", sent=sent)
        if status in (400, 422):
            raise _field_errors(answer, len(batch), scrubber(sent))
        if status in CREDENTIALS_STATUSES:
            raise CredentialsError(f"Nudgify refused the account: {message}", status=status)
        if status == 402:
            if any(text in message.lower() for text in ACCOUNT_MESSAGES):
                raise CredentialsError(f"Nudgify refused the account: {message}", status=402)
            raise FailedRequestError(f"Nudgify failed the request: {message}", status=402,
                                     error_class="request_failed",
                                     retry_after=answer.retry_after)  # fmt: skip
        if status == 409:
            raise FailedRequestError(f"Nudgify conflict: {message}", status=409,
                                     error_class="conflict",
                                     retry_after=answer.retry_after)  # fmt: skip
        if status == 413:
            raise RejectedError(message, status=413)
        raise misconfigured(answer, "Nudgify", message)

    async def aclose(self) -> None:
        await self._client.aclose()


def _field_errors(answer: Answer, size: int, scrub: Callable[[str], str]) -> DeliveryError:
    body = answer.json()
    errors = body.get("errors") if isinstance(body, dict) else None
    headline = body.get("message") if isinstance(body, dict) else None
    detail = [flatten(v) for v in (headline, errors) if v not in (None, "", [], {})]
    message = scrub(": ".join(detail) if detail else answer.text) or f"HTTP {answer.status}"
    culprits: dict[int, list[str]] = {}
    envelope: list[str] = []
    for key, text in _entries(errors):
        match = ORDER_FIELD.match(key)
        if match and int(match.group(1)) < size:
            culprits.setdefault(int(match.group(1)), []).append(f"{key}: {text}")
        elif key in ENVELOPE_FIELDS:
            envelope.append(f"{key}: {text}")
    if envelope:
        # site_key or envelope errors: no order is at fault; the configuration is.
        return MisconfiguredError(
            scrub(f"Nudgify rejected the request: {'; '.join(envelope)}"), status=answer.status
        )
    if culprits:
        named = {i: scrub("; ".join(texts)) for i, texts in culprits.items()}
        return RejectedError(message, status=answer.status, culprits=named)
    return RejectedError(message, status=answer.status)


def _entries(errors: JSON, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, str]]:
    """(dotted key, message) pairs of an `errors` value of any shape; "" when it has no key."""
    if isinstance(errors, dict) and depth < MAX_DEPTH:
        for key, value in errors.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                yield from _entries(value, name, depth + 1)
            else:
                yield name, flatten(value, depth + 1)
    elif isinstance(errors, list) and depth < MAX_DEPTH:
        for item in errors:
            yield from _entries(item, prefix, depth + 1)
    elif errors is not None:
        yield prefix, flatten(errors, depth + 1)
