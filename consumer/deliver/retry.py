"""The retry policy, in one place: exponential backoff with jitter, at least Retry-After."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from consumer.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")
# A vendor asking for more than an hour is misbehaving; we retry then, and it may ask again.
RETRY_AFTER_CAP_S = 3600.0


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float = 0.5
    maximum_s: float = 60.0
    multiplier: float = 2.0

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Delay before retry number `attempt` (0-based): "equal jitter", so at least half the
        exponential step always passes, and never less than the vendor's Retry-After."""
        step = min(self.maximum_s, self.initial_s * self.multiplier ** min(attempt, 32))
        jittered = step / 2 + random.uniform(0, step / 2)
        if retry_after is not None:
            return max(jittered, min(retry_after, RETRY_AFTER_CAP_S))
        return jittered


async def persist(
    operation: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    retry_on: type[Exception] | tuple[type[Exception], ...],
    event: str,
    **context: object,
) -> T:
    """Run `operation` until it succeeds, waiting `backoff` between failures of `retry_on`.

    For what must not be skipped (ledger writes, dead letters): progress waits instead.
    """
    attempt = 0
    while True:
        try:
            return await operation()
        except retry_on as exc:
            delay = backoff.delay(attempt)
            log.error(event, error=str(exc), attempt=attempt + 1, retry_in_s=round(delay, 3),
                      **context)  # fmt: skip
            await asyncio.sleep(delay)
            attempt += 1
