"""Per destination: sequence each order's events, batch orders from every record in flight, claim
them in the ledger, send, retry, isolate rejected orders, and pause on credential problems.

    submit(order) ──▶ per-order chain ──▶ queue ──▶ batch ──▶ claim ──▶ send ──▶ mark delivered
                                                       ▲                 │
                                                       └── retry/bisect ─┘
Per-order sequencing: an order's events reach the vendor in topic order. A later event with the
same payload shares the send in flight; one with another payload waits until the earlier send
settled, then the ledger judges it (sent again where the vendor updates, otherwise kept).
Each record is told its outcome through its `Ticket`; the worker never dead-letters by itself:
a rejected order comes back as `Outcome.REJECTED` and the lane writes the dead letter.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from consumer import faultpoints
from consumer.deliver.destination import Destination, Outbound
from consumer.deliver.http import idempotency_key
from consumer.deliver.retry import Backoff, persist
from consumer.errors import (
    DeliveryError,
    FailedRequestError,
    LedgerError,
    PauseError,
    RejectedError,
    TransientError,
)
from consumer.ledger import ClaimRequest, Ledger, State
from consumer.logs import get_logger
from consumer.model import Payload

log = get_logger(__name__)
_T = TypeVar("_T")
INTERNAL_ERROR = "internal_error"
VENDOR = "vendor"  # the hold a vendor's credentials or configuration problem puts on


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # the vendor already holds this very payload
    KEPT = "kept"  # the vendor holds an earlier payload of the order and takes no updates
    STALE = "stale"  # the vendor holds the payload of a later event of the order
    ALREADY_DEAD_LETTERED = "already_dead_lettered"
    REJECTED = "rejected"  # the lane dead-letters it
    ABANDONED = "abandoned"  # its partition was revoked before the send: the next owner has it
    # Settled by the lane, never by the worker:
    SKIPPED = "skipped"  # the destination's rules leave the order out
    UNDECODABLE = "undecodable"  # the record never became an order (dead-lettered as `*`)
    DEAD_LETTERED = "dead_lettered"


class Ticket(Protocol):
    """What the worker needs of one record: where it came from and whom to tell."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def topic(self) -> str: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def abandoned(self) -> bool:
        """True once the record's partition was revoked: its outcome can move no offset."""
        ...

    def settle(self, outcome: Outcome, error: RejectedError | None = None) -> None: ...


@dataclass(slots=True)
class Health:
    state: str = "ok"  # ok | retrying | paused
    reason: str = ""
    since: float = field(default_factory=time.time)

    def set(self, state: str, reason: str = "") -> None:
        if state != self.state or reason != self.reason:
            self.state, self.reason, self.since = state, reason, time.time()


@dataclass(eq=False, slots=True)
class _Send:
    """One payload of one order, and every record waiting for it."""

    outbound: Outbound
    payload_hash: str
    tickets: list[Ticket]
    order_number: str = field(init=False)
    next: _Send | None = None  # the order's next payload: sent once this one settled
    attempts: int = 0  # requests that carried it
    failures: int = 0  # unexpected errors while handling it
    in_air: bool = False  # a request carrying it may have reached the vendor
    settled: bool = False
    queued_at: float = 0.0  # monotonic time it last joined the batch queue

    def __post_init__(self) -> None:
        self.order_number = self.outbound.order_number

    def request(self) -> ClaimRequest:
        """The claim, from the latest record sharing this payload."""
        tickets = self.tickets
        last = (
            tickets[0] if len(tickets) == 1 else max(tickets, key=lambda t: (t.timestamp, t.offset))
        )
        return ClaimRequest(self.order_number, self.payload_hash, last.partition, last.offset,
                            last.topic, last.timestamp)  # fmt: skip


def _set_if_pending(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def payload_hash(payload: Payload) -> str:
    """The ledger's hash of what a payload sends (see `Outbound.digest`)."""
    return Outbound.of("", payload).digest


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
        failed_request_attempts: int = 5,
        internal_error_retries: int = 5,
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
        self._failed_request_attempts = failed_request_attempts
        self._internal_error_retries = internal_error_retries
        self._force = force
        self._orders: dict[str, _Send] = {}  # order number → the last payload submitted
        self._claimed: dict[str, _Send] = {}
        self._queue: list[_Send] = []
        self._wakeup = asyncio.Event()
        self._lingering: asyncio.Future[None] | None = None  # set when a batch fills meanwhile
        self._open = asyncio.Event()  # cleared while the destination is paused
        self._open.set()
        self._pause_reasons: set[str] = set()
        self._probers = 0  # batches the vendor refused that retry while the others wait
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self.internal_errors = 0

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name=f"worker-{self.name}")

    def submit(self, outbound: Outbound, ticket: Ticket) -> None:
        """Deliver one record's entries of an order; the ticket is told the outcome."""
        order_number, digest = outbound.order_number, outbound.digest
        last = self._orders.get(order_number)
        if last is not None and last.payload_hash == digest and not last.settled:
            last.tickets.append(ticket)  # the same payload in flight: one send serves both
            return
        send = _Send(outbound, digest, [ticket])
        self._orders[order_number] = send
        if last is not None and not last.settled:
            last.next = send  # topic order: wait for the earlier payload to settle
        else:
            self._enqueue(send)

    @property
    def pending(self) -> int:
        """Orders submitted and not settled yet."""
        return len(self._orders)

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def hold(self, cause: str, reason: str) -> None:
        """Pause this destination for `cause` (the vendor, the dead-letter brake) until
        `release_hold(cause)`; `reason` is what operators see."""
        self._pause_reasons.add(cause)
        self._open.clear()
        self.health.set("paused", reason)

    def release_hold(self, cause: str) -> None:
        self._pause_reasons.discard(cause)
        if not self._pause_reasons:
            self._open.set()
            if self.health.state == "paused":
                self.health.set("ok")

    # ---- batching ------------------------------------------------------------------------------

    def _enqueue(self, send: _Send) -> None:
        send.queued_at = time.monotonic()
        self._queue.append(send)
        self._wakeup.set()
        if self._lingering is not None and len(self._queue) >= self.destination.max_batch:
            _set_if_pending(self._lingering)  # a full batch goes now, not at the linger's end

    async def _run(self) -> None:
        """Send full batches as soon as a slot is free; a partial batch only once its oldest
        order has waited the linger. Sending the remainder behind every full batch at once
        took 13-52% more requests (and claims and marks) for the same 20,000 orders at full
        load: Nibble 365 instead of 322, Nudgify 212 instead of 172, Custobar 154 instead of
        101; 5% more CPU per order."""
        max_batch = self.destination.max_batch
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                if len(self._queue) < max_batch and self._linger_s > 0:
                    wait = self._queue[0].queued_at + self._linger_s - time.monotonic()
                    if wait > 0:
                        await self._linger(wait)  # let concurrent records fill the batch
                        continue
                await self._slots.acquire()
                batch = self._queue[:max_batch]
                del self._queue[: len(batch)]
                task = asyncio.create_task(self._flush(batch))
                self._tasks.add(task)
                task.add_done_callback(self._flush_done)

    async def _linger(self, seconds: float) -> None:
        """Sleep `seconds`, or until the queue holds a full batch."""
        loop = asyncio.get_running_loop()
        self._lingering = lingering = loop.create_future()
        timer = loop.call_later(seconds, _set_if_pending, lingering)
        try:
            await lingering
        finally:
            timer.cancel()
            self._lingering = None

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _flush(self, batch: list[_Send]) -> None:
        try:
            await self._open.wait()  # paused: only the batches the vendor refused retry
            ready = await self._claim(batch)
            if ready:
                await self._deliver(ready)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: never strand a record
            self._internal_error(batch, exc)

    def _internal_error(self, batch: Sequence[_Send], exc: Exception) -> None:
        """Retry each unsettled send later, a bounded number of times; then reject it as
        `internal_error` so the lane dead-letters it. The order's chain waits meanwhile."""
        self.internal_errors += 1
        log.error("delivery.internal_error", destination=self.name, orders=len(batch),
                  error_type=type(exc).__name__, error=str(exc)[:500])  # fmt: skip
        loop = asyncio.get_running_loop()
        for send in batch:
            if send.settled:
                continue
            self._claimed.pop(send.order_number, None)
            send.failures += 1
            if send.failures > self._internal_error_retries:
                error = RejectedError(f"{type(exc).__name__}: {exc}"[:500],
                                      error_class=INTERNAL_ERROR)  # fmt: skip
                self._settle(send, Outcome.REJECTED, error)
            else:
                loop.call_later(self._backoff.delay(send.failures - 1), self._enqueue, send)

    # ---- claims --------------------------------------------------------------------------------

    async def _claim(self, batch: list[_Send]) -> list[_Send]:
        """Claim what is still wanted; settle what the ledger already knows; re-queue what
        another live instance is sending."""
        live: list[_Send] = []
        for send in batch:
            if send.settled:
                continue
            if all(t.abandoned for t in send.tickets) and not send.in_air:
                self._settle(send, Outcome.ABANDONED)
            else:
                live.append(send)
        if not live:
            return []
        states = await self._with_ledger_retry(
            lambda: self._ledger.claim(
                self.name, [s.request() for s in live], owner=self._owner,
                lease_s=self._lease_s, resend_changed=self.destination.resend_changed,
                force=self._force,
            )
        )  # fmt: skip
        ready: list[_Send] = []
        busy: list[_Send] = []
        for send in live:
            state = states[send.order_number]
            if state is State.CLAIMED:
                self._claimed[send.order_number] = send
                ready.append(send)
            elif state is State.BUSY:
                busy.append(send)
            else:
                self._settle(send, _SETTLED_BY_LEDGER[state])
        if busy:
            # Another live instance is sending these; ask again once its lease may have ended.
            log.info("delivery.claim_busy", destination=self.name, orders=len(busy))
            loop = asyncio.get_running_loop()
            delay = min(self._lease_s / 4, 5.0)
            for send in busy:
                loop.call_later(delay, self._enqueue, send)
        return ready

    # ---- sending -------------------------------------------------------------------------------

    async def _deliver(self, batch: list[_Send], *, bisected: bool = False) -> None:
        probing = False  # the vendor refused this batch; it retries while the others wait
        stopping = False
        try:
            attempt = 0
            failures = self._failed_request_attempts if bisected else 0
            while batch:
                if attempt > 0:
                    batch = await self._claim(batch)  # renew our leases; drop what settled
                    if not batch:
                        return
                key = idempotency_key(self._secret, self.name, [s.order_number for s in batch])
                for send in batch:
                    send.attempts += 1
                    send.in_air = True
                try:
                    await self.destination.send([s.outbound for s in batch], idempotency_key=key)
                except DeliveryError as exc:
                    if exc.status is not None:  # the vendor answered: it did not take it
                        for send in batch:
                            send.in_air = False
                    if isinstance(exc, FailedRequestError):
                        failures += 1
                        if failures >= self._failed_request_attempts:
                            exc = RejectedError(exc.message, status=exc.status,
                                                error_class=exc.error_class)  # fmt: skip
                    if isinstance(exc, TransientError | FailedRequestError):
                        await self._retry_later(batch, exc, attempt)
                        attempt += 1
                    elif isinstance(exc, PauseError):
                        if not probing:
                            probing = True
                            self._probers += 1
                        await self._pause(exc)
                        attempt += 1
                    elif isinstance(exc, RejectedError):
                        # The vendor judged the orders, so it accepted the credentials: a
                        # pause is over (left closed, the isolated rest would wait with no
                        # one to probe).
                        if probing:
                            probing = False
                            self._probers -= 1
                        self._resume()
                        batch = await self._isolate(batch, exc)
                        attempt = 1 if batch else 0
                    continue
                faultpoints.reached("after_vendor_accepted")
                await self._delivered(batch)
                faultpoints.reached("after_ledger_write")
                return
        except asyncio.CancelledError:
            stopping = True
            raise
        finally:
            if probing:
                self._probers -= 1
                if not self._probers and not stopping and VENDOR in self._pause_reasons:
                    # The last refused batch left without the vendor's verdict (its orders
                    # settled elsewhere or their partition was revoked). The batches waiting
                    # behind the pause go, and those the vendor refuses again retry in turn;
                    # kept closed, the pause would have no one to lift it.
                    log.info("delivery.pause_reopened", destination=self.name)
                    self.release_hold(VENDOR)

    async def _retry_later(
        self, batch: Sequence[_Send], exc: TransientError | FailedRequestError, attempt: int
    ) -> None:
        delay = self._backoff.delay(attempt, retry_after=exc.retry_after)
        self.health.set("retrying", exc.message)
        log.warning("delivery.retry", destination=self.name, orders=len(batch),
                    status=exc.status, error=exc.message, attempt=attempt + 1,
                    retry_in_s=round(delay, 3))  # fmt: skip
        await asyncio.sleep(delay)

    async def _isolate(self, batch: list[_Send], exc: RejectedError) -> list[_Send]:
        """Reject exactly the culprits; bisect when the vendor named none. Returns the orders
        to send again."""
        if exc.culprits:
            culprits = {i for i in exc.culprits if i < len(batch)}
            for i in sorted(culprits):
                reason = RejectedError(exc.culprits[i], status=exc.status,
                                       error_class=exc.error_class)  # fmt: skip
                self._reject(batch[i], reason)
            return [s for i, s in enumerate(batch) if i not in culprits]
        if len(batch) == 1:
            self._reject(batch[0], exc)
            return []
        middle = len(batch) // 2
        log.info("delivery.bisect", destination=self.name, orders=len(batch), status=exc.status)
        await asyncio.gather(
            self._deliver(batch[:middle], bisected=True),
            self._deliver(batch[middle:], bisected=True),
        )
        return []

    def _reject(self, send: _Send, exc: RejectedError) -> None:
        # The claim stays until the lane recorded the dead letter (which releases it), so no
        # other instance sends the refused payload meanwhile.
        log.warning("delivery.rejected", destination=self.name, order_number=send.order_number,
                    status=exc.status, error_class=exc.error_class)  # fmt: skip
        self._claimed.pop(send.order_number, None)
        self._settle(send, Outcome.REJECTED, exc)

    async def _pause(self, exc: PauseError) -> None:
        self.hold(VENDOR, exc.message)
        log.error("delivery.paused", destination=self.name, status=exc.status,
                  error_class=exc.error_class, error=exc.message,
                  retry_in_s=self._credentials_retry_s)  # fmt: skip
        await asyncio.sleep(self._credentials_retry_s)

    def _resume(self) -> None:
        if VENDOR in self._pause_reasons:
            log.info("delivery.resumed", destination=self.name)
        self.release_hold(VENDOR)
        if self.health.state == "retrying":
            self.health.set("ok")

    async def _delivered(self, batch: list[_Send]) -> None:
        requests = [s.request() for s in batch]
        await self._with_ledger_retry(
            lambda: self._ledger.mark_delivered(self.name, requests, owner=self._owner)
        )
        self._resume()
        log.debug("delivery.sent", destination=self.name, orders=len(batch),
                  attempts=max(s.attempts for s in batch))  # fmt: skip
        for send in batch:
            self._claimed.pop(send.order_number, None)
            self._settle(send, Outcome.DELIVERED)

    def _settle(self, send: _Send, outcome: Outcome, error: RejectedError | None = None) -> None:
        """Tell every record waiting for this payload, then let the order's next payload go."""
        send.settled = True
        first, *rest = send.tickets
        first.settle(outcome, error)
        shared = _SHARED.get(outcome, outcome)
        for ticket in rest:
            ticket.settle(shared, None)
        if send.next is not None:
            self._enqueue(send.next)
        elif self._orders.get(send.order_number) is send:
            del self._orders[send.order_number]

    async def _with_ledger_retry(self, operation: Callable[[], Awaitable[_T]]) -> _T:
        return await persist(operation, backoff=self._backoff, retry_on=LedgerError,
                             event="ledger.retry", destination=self.name)  # fmt: skip

    async def aclose(self) -> None:
        """Stop sending; give back the claims of orders no request carried (or whose request
        the vendor answered), so the next owner does not count them as the open window."""
        if self._runner is not None:
            self._runner.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        unsent = [n for n, send in self._claimed.items() if not send.in_air]
        if unsent:
            try:
                await self._ledger.release(self.name, unsent, owner=self._owner)
            except LedgerError as exc:
                log.warning("ledger.release_failed", destination=self.name, error=str(exc))
        await self.destination.aclose()


# What the other records sharing a send hear: the first one carried the news.
_SHARED = {Outcome.DELIVERED: Outcome.DUPLICATE, Outcome.REJECTED: Outcome.ALREADY_DEAD_LETTERED}
_SETTLED_BY_LEDGER = {
    State.DELIVERED: Outcome.DUPLICATE,
    State.KEPT: Outcome.KEPT,
    State.STALE: Outcome.STALE,
    State.DEAD_LETTERED: Outcome.ALREADY_DEAD_LETTERED,
}
