"""A Kafka record as the pipeline sees it, and how one is given up: the dead-letter office.

A dead letter is written once per (destination, key, payload): the office claims it in the
ledger first (a replay, a crash before the commit, or another instance reading the same record
does not repeat it), shares one write between the lanes of this process that give up the same
thing at once, waits until Kafka acknowledged it, and only then records it as written. A crash
between the write and the record is the dead letters' open window: written once more. Nothing
here imports Kafka: the sink is a Protocol (`dead_letter.KafkaDeadLetters` in production).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from consumer import faultpoints
from consumer.deliver.retry import Backoff, T, persist
from consumer.errors import DeadLetterError, LedgerError
from consumer.ledger import ANY_PAYLOAD, Ledger, State
from consumer.logs import REDACTOR, get_logger

log = get_logger(__name__)

RECORD = "*"  # the dead-letter "destination" of a record that never became an order
MESSAGE_LIMIT = 1000  # characters of the reason kept in a header


@dataclass(frozen=True, slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = -1  # the record's timestamp (ms since the epoch); -1: none

    @property
    def coordinates(self) -> str:
        """The dead-letter key of a record that has no order number."""
        return f"{self.topic}/{self.partition}@{self.offset}"

    @property
    def size(self) -> int:
        return len(self.value or b"") + len(self.key or b"")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why a record (or one destination of it) was given up; becomes the DLQ headers.

    `message` must already be scrubbed of personal data and secrets (see `REDACTOR.scrub`)."""

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
            "dlq.error.message": REDACTOR.scrub(self.message)[:MESSAGE_LIMIT],
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


class DeadLetterOffice:
    """Writes each dead letter once (see the module docstring); shared by every lane."""

    def __init__(
        self,
        sink: DeadLetterSink,
        ledger: Ledger,
        *,
        owner: str,
        backoff: Backoff,
        lease_s: float = 120.0,
    ) -> None:
        self._sink = sink
        self._ledger = ledger
        self._owner = owner
        self._backoff = backoff
        self._lease_s = lease_s
        self._writing: dict[tuple[str, str, str], asyncio.Future[str]] = {}
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (destination, outcome) → count
        self._seen_done: set[tuple[str, str, str]] = set()  # counted in `outcomes` already

    async def give_up(
        self, record: RawRecord, letter: DeadLetter, *, key: str, payload_hash: str = ANY_PAYLOAD
    ) -> str:
        """Dead-letter unless already done; "dead_lettered" or "already_dead_lettered"."""
        identity = (letter.destination, key, payload_hash)
        if (writing := self._writing.get(identity)) is not None:
            await asyncio.shield(writing)
            return "already_dead_lettered"
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._writing[identity] = future
        try:
            outcome = await self._give_up(record, letter, key, payload_hash)
            self._seen_done.add(identity)  # whatever the outcome: counted here, once
            self.outcomes[(letter.destination, outcome)] += 1
            future.set_result(outcome)
            return outcome
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._writing[identity]

    async def already(self, destination: str, key: str, payload_hash: str) -> bool:
        """Was this dead letter written before (by any lane, process or earlier run)? Counted
        once per process in `outcomes`, however many lanes ask."""
        found = await self._ledger_call(
            lambda: self._ledger.dead_lettered(destination, [(key, payload_hash)])
        )
        identity = (destination, key, payload_hash)
        if found and identity not in self._seen_done:
            self._seen_done.add(identity)
            self.outcomes[(destination, "already_dead_lettered")] += 1
        return bool(found)

    async def _give_up(
        self, record: RawRecord, letter: DeadLetter, key: str, payload_hash: str
    ) -> str:
        while True:  # another instance reading the same record may be writing this very letter
            state = await self._ledger_call(
                lambda: self._ledger.claim_dead_letter(
                    letter.destination, key, payload_hash, owner=self._owner,
                    lease_s=self._lease_s,
                )
            )  # fmt: skip
            if state is State.DEAD_LETTERED:
                return "already_dead_lettered"
            if state is State.CLAIMED:
                break
            await asyncio.sleep(min(self._lease_s / 4, 2.0))
        await persist(lambda: self._sink.send(record, letter), backoff=self._backoff,
                      retry_on=DeadLetterError, event="dead_letter.retry",
                      partition=record.partition, offset=record.offset)  # fmt: skip
        reason = REDACTOR.scrub(letter.message)[:500]
        await self._ledger_call(
            lambda: self._ledger.mark_dead_lettered(
                letter.destination, key, payload_hash, reason, owner=self._owner
            )
        )
        log.warning("record.dead_lettered", partition=record.partition, offset=record.offset,
                    destination=letter.destination, error_class=letter.error_class,
                    order_number=letter.order_number)  # fmt: skip
        faultpoints.reached("after_dead_letter")
        return "dead_lettered"

    async def _ledger_call(self, operation: Callable[[], Awaitable[T]]) -> T:
        return await persist(operation, backoff=self._backoff, retry_on=LedgerError,
                             event="ledger.retry")  # fmt: skip
