"""Per destination: batch orders from every record in flight, claim them in the ledger, send,
retry transient failures, isolate rejected orders, and pause on credential problems.

    submit(order) ──▶ queue ──▶ batch (size or linger) ──▶ claim ──▶ send ──▶ mark delivered
                                                    ▲                 │
                                                    └── retry/bisect ─┘
A record awaits the `Result` of each of its orders; the worker never dead-letters by itself: a
rejected order comes back as `Outcome.REJECTED` and the pipeline writes the dead letter.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from consumer import faultpoints
from consumer.deliver.destination import Destination, Outbound
from consumer.deliver.http import idempotency_key
from consumer.deliver.retry import Backoff, persist
from consumer.errors import LedgerError, PauseError, RejectedError, TransientError
from consumer.ledger import ClaimRequest, Ledger, State
from consumer.logs import get_logger
from consumer.model import Payload

log = get_logger(__name__)
_T = TypeVar("_T")


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # already delivered (ledger) or the same order already in flight
    ALREADY_DEAD_LETTERED = "already_dead_lettered"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    error: RejectedError | None = None
    attempts: int = 0


@dataclass(slots=True)
class _Pending:
    outbound: Outbound
    payload_hash: str
    future: asyncio.Future[Result]
    attempts: int = 0

    @property
    def order_number(self) -> str:
        return self.outbound.order_number


@dataclass(slots=True)
class Health:
    state: str = "ok"  # ok | retrying | paused
    reason: str = ""
    since: float = field(default_factory=time.time)

    def set(self, state: str, reason: str = "") -> None:
        if state != self.state or reason != self.reason:
            self.state, self.reason, self.since = state, reason, time.time()


def payload_hash(payload: Payload) -> str:
    canonical = json.dumps(payload.items, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


class DestinationWorker:
    def __init__(
        self,
        destination: Destination,
        ledger: Ledger,
        *,
        owner: str,
        secret: bytes,
        linger_s: float,
        concurrency: int,
        backoff: Backoff,
        credentials_retry_s: float,
        lease_s: float,
        force: bool = False,
    ) -> None:
        self.destination = destination
        self.name = destination.name
        self.health = Health()
        self._ledger = ledger
        self._owner = owner
        self._secret = secret
        self._linger_s = linger_s
        self._backoff = backoff
        self._credentials_retry_s = credentials_retry_s
        self._lease_s = lease_s
        self._force = force
        self._queue: list[_Pending] = []
        self._in_flight: dict[str, _Pending] = {}
        self._wakeup = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"worker-{self.name}")

    async def submit(self, order_number: str, payload: Payload) -> Result:
        """Deliver one order's payload; resolves when it is delivered, a duplicate, or rejected."""
        if (pending := self._in_flight.get(order_number)) is not None:
            result = await asyncio.shield(pending.future)
            return Result(Outcome.DUPLICATE) if result.outcome is Outcome.DELIVERED else result
        loop = asyncio.get_running_loop()
        pending = _Pending(Outbound(order_number, payload.items), payload_hash(payload),
                           loop.create_future())  # fmt: skip
        self._in_flight[order_number] = pending
        self._enqueue(pending)
        try:
            return await asyncio.shield(pending.future)
        finally:
            if pending.future.done():
                self._in_flight.pop(order_number, None)

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if len(self._queue) < self.destination.max_batch and self._linger_s > 0:
                await asyncio.sleep(self._linger_s)  # let concurrent records fill the batch
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.destination.max_batch]
                del self._queue[: len(batch)]
                await self._slots.acquire()
                task = asyncio.create_task(self._flush(batch))
                self._tasks.add(task)
                task.add_done_callback(self._flush_done)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery.worker_crashed", destination=self.name, error=repr(exc))

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            ready = await self._claim(batch)
            if ready:
                await self._deliver(ready)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never strand a record: fail its futures so it is retried
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            raise

    async def _claim(self, batch: list[_Pending]) -> list[_Pending]:
        requests = [ClaimRequest(p.order_number, p.payload_hash) for p in batch]
        states = await self._with_ledger_retry(
            lambda: self._ledger.claim(
                self.name, requests, owner=self._owner, lease_s=self._lease_s,
                resend_changed=self.destination.resend_changed, force=self._force,
            )
        )  # fmt: skip
        ready: list[_Pending] = []
        busy: list[_Pending] = []
        for pending in batch:
            state = states[pending.order_number]
            if state is State.CLAIMED:
                ready.append(pending)
            elif state is State.BUSY:
                busy.append(pending)
            elif state is State.DELIVERED:
                pending.future.set_result(Result(Outcome.DUPLICATE))
            else:
                pending.future.set_result(Result(Outcome.ALREADY_DEAD_LETTERED))
        if busy:
            # Another live instance is sending these; ask again once its lease may have ended.
            log.info("delivery.claim_busy", destination=self.name, orders=len(busy))
            loop = asyncio.get_running_loop()
            delay = min(self._lease_s / 4, 5.0)
            for pending in busy:
                loop.call_later(delay, self._enqueue, pending)
        return ready

    async def _deliver(self, batch: list[_Pending]) -> None:
        attempt = 0
        while batch:
            if attempt == 0:
                await self._open.wait()  # paused: a batch already failing is the one that probes
            else:
                batch = await self._renew(batch)
                if not batch:
                    return
            key = idempotency_key(self._secret, self.name, [p.order_number for p in batch])
            for pending in batch:
                pending.attempts += 1
            try:
                await self.destination.send([p.outbound for p in batch], idempotency_key=key)
            except TransientError as exc:
                delay = self._backoff.delay(attempt, retry_after=exc.retry_after)
                self.health.set("retrying", exc.message)
                log.warning("delivery.retry", destination=self.name, orders=len(batch),
                            status=exc.status, error=exc.message, attempt=attempt + 1,
                            retry_in_s=round(delay, 3))  # fmt: skip
                await asyncio.sleep(delay)
                attempt += 1
                continue
            except PauseError as exc:
                await self._pause(exc)
                attempt += 1
                continue
            except RejectedError as exc:
                # The vendor judged the orders, so it accepted the credentials: a pause is over.
                # (Left closed, the isolated rest and bisected halves would wait on the gate
                # below with nobody left to probe: the destination would stall for good.)
                self._open.set()
                self.health.set("ok")
                batch = await self._isolate(batch, exc)
                attempt = 0
                continue
            faultpoints.reached("after_vendor_accepted")
            await self._delivered(batch)
            faultpoints.reached("after_ledger_write")
            return

    async def _isolate(self, batch: list[_Pending], exc: RejectedError) -> list[_Pending]:
        """Dead-letter exactly the culprits; bisect when the vendor named none. Returns the
        orders to send again."""
        if exc.culprits:
            culprits = {i for i in exc.culprits if i < len(batch)}
            for i in sorted(culprits):
                reason = RejectedError(exc.culprits[i], status=exc.status)
                await self._reject(batch[i], reason)
            return [p for i, p in enumerate(batch) if i not in culprits]
        if len(batch) == 1:
            await self._reject(batch[0], exc)
            return []
        middle = len(batch) // 2
        log.info("delivery.bisect", destination=self.name, orders=len(batch), status=exc.status)
        await asyncio.gather(self._deliver(batch[:middle]), self._deliver(batch[middle:]))
        return []

    async def _reject(self, pending: _Pending, exc: RejectedError) -> None:
        log.warning("delivery.rejected", destination=self.name, order_number=pending.order_number,
                    status=exc.status, error=exc.message)  # fmt: skip
        # The claim is given back: the pipeline records dead_lettered once the DLQ has it.
        await self._with_ledger_retry(
            lambda: self._ledger.release(self.name, [pending.order_number], owner=self._owner)
        )
        pending.future.set_result(Result(Outcome.REJECTED, exc, pending.attempts))

    async def _pause(self, exc: PauseError) -> None:
        self._open.clear()
        self.health.set("paused", exc.message)
        log.error("delivery.paused", destination=self.name, status=exc.status, error=exc.message,
                  retry_in_s=self._credentials_retry_s)  # fmt: skip
        await asyncio.sleep(self._credentials_retry_s)

    async def _renew(self, batch: list[_Pending]) -> list[_Pending]:
        """Keep our claims alive across retries; drop orders someone else finished meanwhile."""
        ready = await self._claim(batch)
        return ready

    async def _delivered(self, batch: list[_Pending]) -> None:
        requests = [ClaimRequest(p.order_number, p.payload_hash) for p in batch]
        await self._with_ledger_retry(
            lambda: self._ledger.mark_delivered(self.name, requests, owner=self._owner)
        )
        self._open.set()
        self.health.set("ok")
        log.info("delivery.sent", destination=self.name, orders=len(batch),
                 attempts=max(p.attempts for p in batch))  # fmt: skip
        for pending in batch:
            pending.future.set_result(Result(Outcome.DELIVERED, attempts=pending.attempts))

    async def _with_ledger_retry(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        return await persist(operation, backoff=self._backoff, retry_on=LedgerError,
                             event="ledger.retry", destination=self.name)  # fmt: skip

    @property
    def pending(self) -> int:
        return len(self._in_flight)

    async def aclose(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.destination.aclose()
