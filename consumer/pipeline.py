"""Per record: decode → for each destination: transform → worker (ledger, batch, send) → result.

A record is done when every enabled destination is delivered, skipped by rule, found already
delivered, or dead-lettered (the dead letter acknowledged by Kafka). Only then may the runner
count its offset as complete. Nothing here imports Kafka: the dead-letter sink is a Protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from consumer import faultpoints
from consumer.decode import Decoder
from consumer.deliver.retry import Backoff, T, persist
from consumer.deliver.worker import DestinationWorker, Outcome
from consumer.errors import DeadLetterError, LedgerError, RecordError
from consumer.ledger import Ledger, State
from consumer.logs import REDACTOR, get_logger
from consumer.model import Invalid, Order, Skip

log = get_logger(__name__)

RECORD = "*"  # the dead-letter "destination" of a record that never became an order


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a record (or one destination of it) was given up; becomes the DLQ headers."""

    destination: str
    error_class: str
    message: str
    status: int | None = None
    attempts: int = 0
    order_number: str | None = None

    def headers(self, record: RawRecord) -> list[tuple[str, bytes]]:
        fields = {
            "dlq.destination": self.destination,
            "dlq.error.class": self.error_class,
            "dlq.error.message": REDACTOR.scrub(self.message)[:1000],
            "dlq.status": "" if self.status is None else str(self.status),
            "dlq.attempts": str(self.attempts),
            "dlq.order_number": self.order_number or "",
            "dlq.original.topic": record.topic,
            "dlq.original.partition": str(record.partition),
            "dlq.original.offset": str(record.offset),
        }
        return [*record.headers, *((k, v.encode()) for k, v in fields.items())]


class DeadLetterSink(Protocol):
    async def send(self, record: RawRecord, letter: DeadLetter) -> None:
        """Return once the broker acknowledged the write; raise DeadLetterError otherwise."""
        ...


@dataclass(slots=True)
class Metrics:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    records_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def count(self, destination: str, outcome: str) -> None:
        self.outcomes[(destination, outcome)] += 1

    def summary(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for (destination, outcome), n in sorted(self.outcomes.items()):
            table.setdefault(destination, {})[outcome] = n
        return table


class Pipeline:
    def __init__(
        self,
        *,
        decoder: Decoder,
        workers: Sequence[DestinationWorker],
        ledger: Ledger,
        dead_letters: DeadLetterSink,
        owner: str,
        backoff: Backoff,
    ) -> None:
        self._decoder = decoder
        self.workers = tuple(workers)
        self._ledger = ledger
        self._dead_letters = dead_letters
        self._owner = owner
        self._backoff = backoff
        self.metrics = Metrics()

    async def process(self, record: RawRecord) -> dict[str, str]:
        """Run one record to completion; returns the outcome per destination."""
        try:
            order = await self._decoder.decode(record.value)
        except RecordError as exc:
            log.warning("record.undecodable", partition=record.partition, offset=record.offset,
                        error_class=exc.error_class, error=str(exc))  # fmt: skip
            outcome = await self._dead_letter_record(record, exc)
            self.metrics.count(RECORD, outcome)
            return {RECORD: outcome}
        results = await asyncio.gather(*(self._deliver(w, order, record) for w in self.workers))
        outcomes = {w.name: r for w, r in zip(self.workers, results, strict=True)}
        self.metrics.records_done += 1
        log.info("record.done", order_number=order.order_number, partition=record.partition,
                 offset=record.offset, outcomes=outcomes)  # fmt: skip
        return outcomes

    async def _deliver(self, worker: DestinationWorker, order: Order, record: RawRecord) -> str:
        outcome = await self._outcome(worker, order, record)
        self.metrics.count(worker.name, outcome)
        return outcome

    async def _outcome(self, worker: DestinationWorker, order: Order, record: RawRecord) -> str:
        context = {"order_number": order.order_number, "partition": record.partition,
                   "offset": record.offset, "destination": worker.name}  # fmt: skip
        result = worker.destination.transform(order)
        if isinstance(result, Skip):
            log.info("destination.skipped", reason=result.reason, **context)
            return "skipped"
        if isinstance(result, Invalid):
            letter = DeadLetter(worker.name, "invalid_for_destination", result.reason,
                                order_number=order.order_number)  # fmt: skip
            outcome = await self._dead_letter_once(record, letter, key=order.order_number)
            if outcome == "dead_lettered":
                log.warning("destination.invalid", reason=result.reason, **context)
            return outcome
        for note in result.notes:
            log.info("transform.adjusted", note=note, **context)
        delivered = await worker.submit(order.order_number, result)
        if delivered.outcome is Outcome.REJECTED and delivered.error is not None:
            error = delivered.error
            letter = DeadLetter(worker.name, error.error_class, error.message, error.status,
                                delivered.attempts, order.order_number)  # fmt: skip
            # No ledger check first: the worker just released this order's claim.
            await self._dead_letter_and_record(record, letter, key=order.order_number)
            return "dead_lettered"
        return delivered.outcome.value

    async def _dead_letter_record(self, record: RawRecord, exc: RecordError) -> str:
        """A record no destination can read, keyed by its coordinates (it has no order
        number)."""
        key = f"{record.topic}/{record.partition}@{record.offset}"
        letter = DeadLetter(RECORD, exc.error_class, str(exc))
        return await self._dead_letter_once(record, letter, key=key)

    async def _dead_letter_once(self, record: RawRecord, letter: DeadLetter, *, key: str) -> str:
        """Dead-letter unless the ledger says it already was: a replay, or a crash before the
        commit, does not repeat it."""
        destination = letter.destination
        states = await self._ledger_call(lambda: self._ledger.states(destination, [key]))
        if states.get(key) is State.DEAD_LETTERED:
            return "already_dead_lettered"
        await self._dead_letter_and_record(record, letter, key=key)
        return "dead_lettered"

    async def _dead_letter_and_record(
        self, record: RawRecord, letter: DeadLetter, *, key: str
    ) -> None:
        await self._dead_letter(record, letter)
        reason = REDACTOR.scrub(letter.message)[:500]
        await self._ledger_call(
            lambda: self._ledger.mark_dead_lettered(
                letter.destination, key, reason, owner=self._owner
            )
        )
        faultpoints.reached("after_dead_letter")

    async def _dead_letter(self, record: RawRecord, letter: DeadLetter) -> None:
        """Write the dead letter, retrying until Kafka acknowledges: the offset waits for it."""
        await persist(lambda: self._dead_letters.send(record, letter), backoff=self._backoff,
                      retry_on=DeadLetterError, event="dead_letter.retry",
                      partition=record.partition, offset=record.offset)  # fmt: skip
        log.info("record.dead_lettered", partition=record.partition, offset=record.offset,
                 destination=letter.destination, error_class=letter.error_class,
                 order_number=letter.order_number)  # fmt: skip

    async def _ledger_call(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await persist(operation, backoff=self._backoff, retry_on=LedgerError,
                             event="ledger.retry")  # fmt: skip
