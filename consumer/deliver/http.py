"""What every vendor client shares: one POST that turns transport trouble and generic statuses
into the error tree, Retry-After parsing, the Idempotency-Key, and client construction."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from consumer.errors import MisconfiguredError, TransientError
from consumer.logs import REDACTOR
from consumer.model import JSON

TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def build_client(
    base_url: str, *, timeout_s: float, concurrency: int, auth: httpx.Auth | None = None
) -> httpx.AsyncClient:
    """One AsyncClient per vendor. TLS verification is always on: there is no setting for it."""
    return httpx.AsyncClient(
        base_url=base_url,
        auth=auth,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        limits=httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency),
        headers={"accept": "application/json", "user-agent": "order-consumer/0.1"},
        follow_redirects=False,
    )


def idempotency_key(secret: bytes, destination: str, order_numbers: Sequence[str]) -> str:
    """HMAC of (destination, order numbers): stable across re-sends, reveals no order number."""
    message = "\n".join([destination, *order_numbers]).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def retry_after_seconds(response: httpx.Response, *, now: datetime | None = None) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_text(response: httpx.Response, *keys: str) -> str:
    """The vendor's own message (first of `keys` found in a JSON object body), scrubbed."""
    body = json_body(response)
    if isinstance(body, dict):
        for key in keys:
            value: Any = body
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, str) and value:
                return REDACTOR.scrub(value)
    return REDACTOR.scrub(response.text[:300]) or f"HTTP {response.status_code}"


def json_body(response: httpx.Response) -> JSON:
    try:
        return response.json()
    except ValueError:
        return None


async def post_json(
    client: httpx.AsyncClient, path: str, body: JSON, *, headers: dict[str, str]
) -> httpx.Response:
    """POST and classify what no vendor disagrees on: transport errors and transient statuses."""
    try:
        response = await client.post(path, json=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise TransientError(f"timeout: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        raise TransientError(f"connection failed: {type(exc).__name__}") from exc
    if response.status_code in TRANSIENT_STATUSES or response.status_code >= 500:
        raise TransientError(
            f"HTTP {response.status_code}",
            status=response.status_code,
            retry_after=retry_after_seconds(response),
        )
    return response


def misconfigured(response: httpx.Response, message: str) -> MisconfiguredError:
    """404/405 etc.: the URL or account is wrong, not the order. Pause, never dead-letter."""
    return MisconfiguredError(
        f"{message} (HTTP {response.status_code})", status=response.status_code
    )
