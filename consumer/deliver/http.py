"""What every vendor client shares: one bounded POST that turns transport trouble and the statuses
no vendor disagrees on into the error tree, defensive reading of whatever a vendor answers, the
Idempotency-Key, and client construction.

    post_json(client, path, body) ─▶ Answer(status, headers, at most 64 KiB of body)
      no complete answer within the client's timeout, network trouble ─▶ TransientError
      3xx (redirects are never followed: they would carry our credentials) ─▶ MisconfiguredError
      408, 425, 429, 5xx except 501/505/511 ─▶ TransientError(retry_after=Retry-After)
      anything else ─▶ the Answer, for the vendor's own table (in its client's docstring)

Bounds: the client's timeout (`HTTP_TIMEOUT_S`) is a deadline for the WHOLE exchange — connect,
send, status line and body — not httpx's per-read timeout, which a vendor dripping a byte a
second never trips. At most `RESPONSE_CAP_BYTES` of a body are read; past that the answer is
classified by its status with the truncated text. A 2xx status is the vendor's verdict: if its
body is then slower than the deadline or cut off, the orders count as delivered (nothing in a
success body changes that), where resending would duplicate them.

Reading answers never raises: a body may be anything (no JSON, a list, a string, null, nested
beyond reason, a bogus charset), `Retry-After` any text. Messages put into errors are truncated,
stripped of the personal values we sent and of e-mails, IPs and secrets (REDACTOR).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_tz
from typing import Any
from urllib.parse import urlsplit

import httpx

from consumer.deliver.retry import RETRY_AFTER_CAP_S
from consumer.errors import MisconfiguredError, TransientError
from consumer.logs import REDACTED, REDACTOR
from consumer.model import JSON

RESPONSE_CAP_BYTES = 64 * 1024
MESSAGE_CHARS = 500  # of a vendor's message in an error (and so in logs and dead letters)
SUCCESS_STATUSES = frozenset({200, 201, 202, 204})
"""2xx that say "accepted"; 203, 205, 206, 207 (a proxy's copy, partial or per-item results)
are no such verdict and fall to the vendor's table as undocumented."""
TRANSIENT_STATUSES = frozenset({408, 425, 429})
NOT_TRANSIENT_5XX = frozenset({501, 505, 511})
"""Not implemented, HTTP version, network authentication (a captive portal): no retry helps."""
PERSONAL_FIELDS = frozenset({"email", "first_name", "last_name", "ip", "city", "state",
                             "sale_email", "sale_phone_number", "sale_customer_id",
                             "session_token"})  # fmt: skip
"""Request fields whose values are scrubbed from a vendor's message (some vendors echo them)."""
MAX_DEPTH = 16  # how deep a vendor's JSON is walked; deeper parts are summarised, never recursed
DEFAULT_DEADLINE_S = 15.0

_DELTA_SECONDS = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")  # fractions: a sandbox extension


def build_client(
    base_url: str,
    *,
    timeout_s: float,
    concurrency: int,
    auth: httpx.Auth | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One AsyncClient per vendor. TLS verification is always on: there is no setting for it.
    `timeout_s` also bounds each whole exchange (see `post_json`). `transport`: tests only
    (httpx.MockTransport); the network otherwise."""
    return httpx.AsyncClient(
        base_url=base_url,
        auth=auth,
        transport=transport,
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        limits=httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency),
        # identity: a compressed error body could inflate far past the cap in one chunk.
        headers={
            "accept": "application/json",
            "accept-encoding": "identity",
            "user-agent": "order-consumer/0.1",
        },
        follow_redirects=False,
    )


def idempotency_key(secret: bytes, destination: str, order_numbers: Sequence[str]) -> str:
    """HMAC of (destination, order numbers): stable across re-sends, reveals no order number."""
    message = "\n".join([destination, *order_numbers]).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Answer:
    """A vendor's answer: status, headers, and at most RESPONSE_CAP_BYTES of its body."""

    status: int
    headers: httpx.Headers
    content: bytes = b""
    truncated: bool = False

    @property
    def text(self) -> str:
        charset = _charset(self.headers.get("content-type", ""))
        try:
            return self.content.decode(charset or "utf-8", errors="replace")
        except LookupError:  # a charset Python does not know
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> JSON:
        """The body as JSON, or None: truncated, not JSON, or nested past the parser's limit."""
        if self.truncated or not self.content:
            return None
        try:
            return json.loads(self.text)
        except (ValueError, RecursionError):
            return None

    @property
    def retry_after(self) -> float | None:
        return retry_after_seconds(self.headers.get("retry-after"))


async def post_json(
    client: httpx.AsyncClient, path: str, body: bytes, *, headers: dict[str, str]
) -> Answer:
    """POST a JSON document (already serialised) within the deadline, read at most the cap,
    and classify what every vendor shares."""
    limit = deadline_s(client)
    request = client.build_request(
        "POST", path, content=body, headers={**headers, "content-type": "application/json"}
    )
    try:
        answer = await _exchange(client, request, limit)
    except TimeoutError as exc:
        raise TransientError(f"timeout: no complete answer within {limit:g} s") from exc
    except httpx.TimeoutException as exc:
        raise TransientError(f"timeout: {type(exc).__name__}") from exc
    except httpx.HTTPError as exc:  # connect, protocol, a body that does not decode
        raise TransientError(f"connection failed: {type(exc).__name__}") from exc
    status = answer.status
    if 300 <= status < 400:
        raise MisconfiguredError(
            f"redirected (HTTP {status}) to {_origin(answer.headers.get('location'))}: redirects"
            " are never followed (they would carry the credentials); check the base URL",
            status=status,
        )
    if status in TRANSIENT_STATUSES or (500 <= status < 600 and status not in NOT_TRANSIENT_5XX):
        raise TransientError(f"HTTP {status}", status=status, retry_after=answer.retry_after)
    return answer


def deadline_s(client: httpx.AsyncClient) -> float:
    """The whole-exchange deadline: the largest of the client's configured timeouts."""
    timeout = client.timeout
    limits = [t for t in (timeout.connect, timeout.read, timeout.write, timeout.pool) if t]
    return max(limits) if limits else DEFAULT_DEADLINE_S


async def _exchange(client: httpx.AsyncClient, request: httpx.Request, limit: float) -> Answer:
    when = asyncio.get_running_loop().time() + limit
    async with asyncio.timeout_at(when):
        response = await client.send(request, stream=True)
    try:
        content, truncated = await _read_capped(response, when)
    finally:
        await response.aclose()  # an unread rest closes the connection instead of reusing it
    return Answer(response.status_code, response.headers, content, truncated)


async def _read_capped(response: httpx.Response, when: float) -> tuple[bytes, bool]:
    """At most the cap of the body, and whether that is less than all of it. The status line is
    the verdict: a body that does not decode is classified by status; a 2xx body cut short by
    the deadline or the network changes nothing; any other cut short body is transient."""
    content = bytearray()
    try:
        async with asyncio.timeout_at(when):
            async for chunk in response.aiter_bytes():
                content += chunk
                if len(content) > RESPONSE_CAP_BYTES:
                    return bytes(content[:RESPONSE_CAP_BYTES]), True
    except httpx.DecodingError:
        return bytes(content), True
    except (TimeoutError, httpx.TransportError):
        if 200 <= response.status_code < 300:
            return bytes(content), True
        raise
    return bytes(content), False


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value, or None when it says nothing usable.

    delta-seconds (with fractions), IMF-fixdate, RFC 850 and asctime dates, and dates with a
    numeric zone (`-0000` and `+0000` included) are read; anything else is ignored. A date in the
    past is 0; a wait is never longer than RETRY_AFTER_CAP_S.
    """
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return min(float(value), RETRY_AFTER_CAP_S)
    when = _http_date(value)
    if when is None:
        return None
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), RETRY_AFTER_CAP_S)


def _http_date(value: str) -> datetime | None:
    try:
        parts = parsedate_tz(value[:64])
        if parts is None:
            return None
        # HTTP dates are UTC; "-0000" ("zone unknown" in e-mail) and no zone are read as UTC.
        moment = datetime(*parts[:6], tzinfo=UTC)
        return moment - timedelta(seconds=parts[9] or 0)
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def error_text(answer: Answer, *keys: str, sent: JSON = None) -> str:
    """The vendor's own message (the first of `keys` — dotted paths — found in a JSON object body,
    else the body's text), scrubbed of what we sent that is personal; "HTTP <status>" if empty."""
    body = answer.json()
    message = None
    if isinstance(body, dict):
        for key in keys:
            value: Any = body
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if value not in (None, "", [], {}):
                message = flatten(value)
                break
    if message is None:
        message = answer.text
    return scrubber(sent)(message) or f"HTTP {answer.status}"


def flatten(value: JSON, depth: int = 0) -> str:
    """Any JSON value as one line of text: strings as they are, lists joined with "; ", objects
    as "key: value"; bounded in depth (and the body is bounded in size)."""
    if isinstance(value, str):
        return value
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, list):
        return "; ".join(flatten(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {flatten(v, depth + 1)}" for k, v in value.items())
    return json.dumps(value)


def scrubber(sent: JSON) -> Callable[[str], str]:
    """A function that makes a vendor's text fit for errors, logs and dead-letter headers: one
    line, truncated to MESSAGE_CHARS, without the personal values of the request `sent` (some
    vendors echo the request back), e-mails, IPs or secrets."""
    values = sorted(set(_personal_values(sent)), key=len, reverse=True)
    pattern = None
    if values:
        alternatives = "|".join(re.escape(v) for v in values)
        pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")

    def scrub(text: str) -> str:
        text = " ".join(text[: MESSAGE_CHARS * 4].split())  # truncate first, then scan
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return REDACTOR.scrub(text)[:MESSAGE_CHARS]

    return scrub


def _personal_values(sent: JSON, depth: int = 0) -> Iterator[str]:
    if depth > MAX_DEPTH:
        return
    if isinstance(sent, list | tuple):
        for item in sent:
            yield from _personal_values(item, depth + 1)
    elif isinstance(sent, dict):
        for key, value in sent.items():
            if key in PERSONAL_FIELDS and isinstance(value, str) and len(value.strip()) >= 2:
                # As sent, as a vendor re-serialising it would write it, and as the one-line
                # text `scrub` makes of the answer shows it (whitespace collapsed).
                for form in (value, json.dumps(value)[1:-1]):
                    yield form
                    yield " ".join(form.split())
            else:
                yield from _personal_values(value, depth + 1)


def misconfigured(answer: Answer, vendor: str, message: str) -> MisconfiguredError:
    """A status the vendor does not document for this call: the URL, host or a setting is wrong,
    not the order. Pause, never dead-letter."""
    status = answer.status
    if status in (404, 405, 410):
        hint = "endpoint not found; check the base URL"
    else:
        hint = "a status its API does not document for this call; check the URL and settings"
    return MisconfiguredError(f"{vendor} answered HTTP {status}, {hint}: {message}", status=status)


def _charset(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or None
    return None


def _origin(location: str | None) -> str:
    """Where a redirect points, without its path or any user info: "https://host:port"."""
    if not location:
        return "nowhere (no Location)"
    try:
        parts = urlsplit(location.strip()[:2000])
        host = parts.hostname
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "an unreadable Location"
    if not host:
        return "a path on the same host"
    return REDACTOR.scrub(f"{parts.scheme}://{host}{port}"[:200])
