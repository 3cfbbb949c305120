"""The sandbox's memory: per vendor, the faults it was told to inject, what it accepted (in
memory and optionally as JSONL), and counters. Everything runs on the server's event loop, so
no locks are needed."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

VENDORS = ("nibble", "nudgify", "custobar", "registry")
RATES = ("error_rate", "rate_limit_rate", "timeout_rate", "conflict_rate", "request_failed_rate")
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CONFLICT = "The request conflicts with another request."
REQUEST_FAILED = "The parameters were valid but the request failed."


@dataclass(slots=True)
class Faults:
    """What a vendor should do wrong. Rates are shares of requests in [0, 1]."""

    latency_ms: float = 0
    down: bool = False  # every request answers 503
    error_rate: float = 0
    error_status: int = 503
    rate_limit_rate: float = 0
    retry_after_s: float = 1
    timeout_rate: float = 0  # sleep timeout_s, then 504, nothing recorded
    timeout_s: float = 30
    reject_auth: bool = False  # the vendor's own 401 for the right credentials
    account_state: str = "ok"  # Nudgify: lite, api_not_enabled, nudges_not_configured, api_disabled
    reject_orders: list[str] = field(default_factory=list)  # keys answered with a 400
    hold_orders: list[str] = field(default_factory=list)  # keys whose requests wait hold_s
    hold_s: float = 0
    redirect_status: int = 0  # 301/302/303/307/308 with a Location elsewhere; 0: off
    drip_s: float = 0  # a 503 error body sent one byte every drip_s seconds; nothing recorded
    huge_body_mb: float = 0  # an error_status answer with a body of this many MiB
    echo_request: bool = False  # a 400 whose error message echoes the request body back
    # Nudgify documents these two; any vendor answers them, in its own error body shape.
    conflict_rate: float = 0  # 409 "The request conflicts with another request."
    request_failed_rate: float = 0  # 402 "The parameters were valid but the request failed."

    @classmethod
    def parse(cls, values: dict[str, Any]) -> Faults:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
        faults = cls(**values)
        for name in RATES:
            if not 0 <= getattr(faults, name) <= 1:
                raise ValueError(f"{name} must be within [0, 1]")
        if faults.redirect_status and faults.redirect_status not in REDIRECTS:
            raise ValueError(f"redirect_status must be 0 or one of {sorted(REDIRECTS)}")
        if faults.drip_s < 0 or faults.huge_body_mb < 0:
            raise ValueError("drip_s and huge_body_mb must not be negative")
        return faults


@dataclass(slots=True)
class Accepted:
    """One order (one key) in one accepted request."""

    key: str
    payload: Any


class VendorBook:
    """Faults, records and counters of one vendor."""

    def __init__(self, vendor: str, record_dir: Path | None, rng: random.Random) -> None:
        self.vendor = vendor
        self.faults = Faults()
        self._rng = rng
        self._record_file = record_dir / f"{vendor}.jsonl" if record_dir else None
        self.reset()

    def reset(self) -> None:
        self.faults = Faults()
        self.records: list[dict[str, Any]] = []
        self.request_sizes: list[int] = []
        self.keys: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self._not_before: dict[str, float] = {}

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.counters["requests"],
            "accepted_requests": self.counters["accepted_requests"],
            "rejected_requests": self.counters["rejected_requests"],
            "failed_requests": self.counters["failed_requests"],
            "items": sum(self.keys.values()),
            "distinct": len(self.keys),
            "duplicates": sum(n - 1 for n in self.keys.values()),
            "early_retries": self.counters["early_retries"],
            "incomplete": self.counters["incomplete"],
            "statuses": dict(self.statuses),
        }

    async def injected_failure(
        self, request: Request, unauthorized: Callable[[], Response]
    ) -> Response | None:
        """Apply latency and answer for the fault, if one fires; None lets the request through."""
        self.counters["requests"] += 1
        self._note_early_retry(request)
        f = self.faults
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        if f.down:
            return self.failed(JSONResponse({"message": "Service Unavailable"}, 503))
        if f.redirect_status:
            moved = str(request.url.replace(path=f"/moved{request.url.path}"))
            return self.failed(Response(status_code=f.redirect_status, headers={"Location": moved}))
        if f.drip_s:
            return self.failed(_dripping(b'{"message": "Service Unavailable"}', 503, f.drip_s))
        if f.huge_body_mb:
            return self.failed(_huge(f.huge_body_mb, f.error_status))
        if f.echo_request:
            echoed = (await request.body()).decode("utf-8", errors="replace")
            return self.rejected(self.error(f"Invalid request: {echoed}", 400))
        if f.reject_auth:
            return self.rejected(unauthorized())
        if f.conflict_rate and self._rng.random() < f.conflict_rate:
            return self.failed(self.error(CONFLICT, 409))
        if f.request_failed_rate and self._rng.random() < f.request_failed_rate:
            return self.failed(self.error(REQUEST_FAILED, 402))
        if f.rate_limit_rate and self._rng.random() < f.rate_limit_rate:
            self._remember_retry_after(request, f.retry_after_s)
            headers = {"Retry-After": _retry_after_header(f.retry_after_s)}
            return self.failed(JSONResponse({"message": "Too Many Requests"}, 429, headers))
        if f.error_rate and self._rng.random() < f.error_rate:
            return self.failed(JSONResponse({"message": "Server Error"}, f.error_status))
        if f.timeout_rate and self._rng.random() < f.timeout_rate:
            await asyncio.sleep(f.timeout_s)
            return self.failed(JSONResponse({"message": "Gateway Timeout"}, 504))
        return None

    def error(self, message: str, status: int) -> JSONResponse:
        """An error in this vendor's own body shape (for injected faults)."""
        if self.vendor == "nibble":
            return JSONResponse({"errorMessage": message}, status)
        if self.vendor == "custobar":
            return JSONResponse({"error": {"reason": message}}, status)
        if self.vendor == "nudgify" and status in (400, 422):
            return JSONResponse({"message": "Bad Request.", "errors": {"orders.0": [message]}},
                                status)  # fmt: skip
        return JSONResponse({"message": message}, status)

    async def hold(self, keys: Iterable[str]) -> None:
        if self.faults.hold_s and set(keys) & set(self.faults.hold_orders):
            await asyncio.sleep(self.faults.hold_s)

    def rejected_keys(self, keys: Sequence[str]) -> list[int]:
        """Indexes of the keys the `reject_orders` fault names."""
        wanted = set(self.faults.reject_orders)
        return [i for i, key in enumerate(keys) if key in wanted]

    def failed(self, response: Response) -> Response:
        self.counters["failed_requests"] += 1
        self.statuses[str(response.status_code)] += 1
        return response

    def rejected(self, response: Response) -> Response:
        self.counters["rejected_requests"] += 1
        self.statuses[str(response.status_code)] += 1
        return response

    def accept(self, request: Request, size: int, accepted: Sequence[Accepted]) -> None:
        self.counters["accepted_requests"] += 1
        self.statuses["200"] += 1
        self.request_sizes.append(size)
        stamp = datetime.now(UTC).isoformat()
        idempotency_key = request.headers.get("idempotency-key")
        lines = []
        for item in accepted:
            self.keys[item.key] += 1
            record = {
                "key": item.key,
                "request": self.counters["accepted_requests"],
                "received_at": stamp,
                "idempotency_key": idempotency_key,
                "payload": item.payload,
            }
            self.records.append(record)
            lines.append(json.dumps(record, separators=(",", ":")))
        if self._record_file is not None and lines:
            with self._record_file.open("a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")

    def _remember_retry_after(self, request: Request, seconds: float) -> None:
        key = request.headers.get("idempotency-key")
        if key:
            self._not_before[key] = time.monotonic() + seconds

    def _note_early_retry(self, request: Request) -> None:
        """A retry of a 429-answered request (same Idempotency-Key) before its Retry-After."""
        key = request.headers.get("idempotency-key")
        not_before = self._not_before.pop(key, None) if key else None
        if not_before is not None and time.monotonic() < not_before - 0.01:
            self.counters["early_retries"] += 1


def _dripping(body: bytes, status: int, every_s: float) -> StreamingResponse:
    """`body`, one byte every `every_s` seconds (headers at once): a per-read timeout never
    fires, only a deadline on the whole answer does."""

    async def drip() -> Any:
        for byte in body:
            yield bytes([byte])
            await asyncio.sleep(every_s)

    return StreamingResponse(drip(), status, media_type="application/json")


def _huge(mebibytes: float, status: int) -> StreamingResponse:
    """An error answer of that many MiB, streamed (never held in memory)."""
    size = int(mebibytes * 1024 * 1024)
    chunk = b"x" * (64 * 1024)

    async def flood() -> Any:
        sent = 0
        while sent < size:
            part = chunk[: size - sent]
            sent += len(part)
            yield part

    headers = {"Content-Length": str(size)}
    return StreamingResponse(flood(), status, headers=headers, media_type="text/plain")


def _retry_after_header(seconds: float) -> str:
    # The header takes whole seconds; fractions are a sandbox extension the client also reads.
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


class SandboxState:
    def __init__(self, record_dir: Path | None, seed: int) -> None:
        if record_dir is not None:
            record_dir.mkdir(parents=True, exist_ok=True)
        rng = random.Random(seed)
        self.books = {vendor: VendorBook(vendor, record_dir, rng) for vendor in VENDORS}

    def book(self, vendor: str) -> VendorBook:
        return self.books[vendor]

    def reset(self) -> None:
        for book in self.books.values():
            book.reset()

    def faults(self) -> dict[str, dict[str, Any]]:
        return {vendor: asdict(book.faults) for vendor, book in self.books.items()}
