"""One destination's lane through the stream: its own consumer group and offsets, its own
in-flight window, its worker. Lanes share the process, the decoder, the ledger and the
dead-letter office, and nothing else, so one vendor's outage never holds back another.

Per record:  poll ─▶ backlog ─▶ decode ─▶ transform ─▶ worker (claim, batch, send)
                                   │           │             │
                                   ▼           ▼             ▼
                              dead letter   skip/dead     delivered, duplicate, kept, stale,
                                            letter        rejected ─▶ dead letter
A record is done for this lane when it has an outcome; only then may its offset count. Every
record gets one: an unexpected error is retried a bounded number of times, then the record is
dead-lettered as `internal_error`. A lane dead-lettering an unusual share of its orders trips
its brake instead: the destination pauses, dead letters wait, and a probe resumes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from consumer import faultpoints
from consumer.decode import Decoder, SchemaPending
from consumer.deliver.destination import Outbound
from consumer.deliver.worker import DestinationWorker, Outcome
from consumer.errors import RecordError, RejectedError
from consumer.ledger import ANY_PAYLOAD
from consumer.logs import REDACTOR, get_logger
from consumer.model import Invalid, Order, Skip, TransformResult
from consumer.offsets import PartitionProgress
from consumer.records import RECORD, DeadLetter, DeadLetterOffice, RawRecord

log = get_logger(__name__)

POLL_BATCH = 500
KEEPALIVE_S = 1.0  # at the bound, one poll a second keeps the membership and rebalances served
OVERFLOW = 30  # records taken by those polls before fetching pauses (about 30 s at the bound)
IDLE_SLEEP_S = 0.01
STORE_EVERY_S = 0.05
YIELD_AFTER_S = 0.0003
"""A lane's processor gives the event loop back after this much work. Every await of the
workers waits for a turn of the loop, and a turn runs every lane's processor once: its length
is the unit of every HTTP exchange and ledger round trip (a PostgreSQL claim takes 4). With
turns of 200 records (~20 ms a lane) a 50-order request took ~50 ms instead of ~2; with 1 ms
turns a PostgreSQL claim still took 37-45 ms (p50), Nibble's lane (the smallest batch) fell
over 4,096 records behind the others, and the decoded records they share expired before it
got to them (33,700 decodes for 20,000 orders). With 0.3 ms turns a claim takes ~23 ms, the
lanes stay together (20,000 decodes) and PostgreSQL runs 2,830-3,250 orders/s instead of
2,280-2,340; SQLite is unchanged (measured on 20,000 orders, two runs each)."""
INTERNAL_ERROR = "internal_error"
BRAKE = "brake"


class Source(Protocol):
    """One consumer group's view of the topic (`runner.KafkaSource` in production)."""

    def subscribe(self, listener: Rebalance) -> None: ...

    def poll(self, max_records: int) -> list[RawRecord]:
        """Records fetched so far (never blocks); rebalance callbacks run inside."""
        ...

    def pause(self, partitions: list[int]) -> None: ...

    def resume(self, partitions: list[int]) -> None: ...

    def store(self, partition: int, offset: int) -> bool:
        """Store the next offset to commit; False: the partition is no longer ours."""
        ...

    def commit(self) -> None: ...

    def lag(self, unfinished: dict[int, int | None]) -> dict[int, int]:
        """Per partition, records behind its end: from the oldest unfinished offset given, or
        (None) from where fetching stands."""
        ...

    @property
    def healthy(self) -> bool: ...

    def close(self) -> None: ...


class Rebalance(Protocol):
    def on_assigned(self, partitions: list[int]) -> None: ...

    def on_revoked(self, partitions: list[int]) -> None:
        """Called before the source commits for these partitions: store final offsets now."""
        ...

    def on_lost(self, partitions: list[int]) -> None: ...


@dataclass(frozen=True, slots=True)
class LaneLimits:
    max_in_flight: int
    max_in_flight_bytes: int
    shutdown_grace_s: float
    internal_error_retries: int
    stalled_record_s: float
    brake_ratio: float
    brake_window: int
    brake_min: int
    probe_every_s: float


class Ticket:
    """One record in this lane (the worker's `Ticket`)."""

    __slots__ = ("_lane", "done", "order", "payload_hash", "progress", "record")

    def __init__(self, lane: Lane, record: RawRecord, progress: PartitionProgress) -> None:
        self._lane = lane
        self.record = record
        self.progress = progress
        self.order: Order | None = None
        self.payload_hash = ANY_PAYLOAD  # of this record's payload, once it has one
        self.done = False

    @property
    def partition(self) -> int:
        return self.record.partition

    @property
    def offset(self) -> int:
        return self.record.offset

    @property
    def topic(self) -> str:
        return self.record.topic

    @property
    def timestamp(self) -> int:
        return self.record.timestamp

    @property
    def abandoned(self) -> bool:
        return self.progress.revoked

    def settle(self, outcome: Outcome, error: RejectedError | None = None) -> None:
        self._lane.settled(self, outcome, error)


class DeadLetterBrake:
    """Over the last `window` orders, more than `ratio` dead-lettered (and at least `minimum`):
    that is a setting or a bug, not bad orders."""

    def __init__(self, *, ratio: float, window: int, minimum: int) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._recent: deque[bool] = deque(maxlen=window)
        self._dead = 0
        self.tripped = False

    def observe(self, dead_lettered: bool) -> bool:
        """Count one settled order; True when this observation trips the brake."""
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._dead -= 1
        self._recent.append(dead_lettered)
        self._dead += dead_lettered
        if self.tripped or self._ratio >= 1:
            return False
        self.tripped = self._dead >= self._minimum and self._dead > self._ratio * len(self._recent)
        return self.tripped

    @property
    def figures(self) -> tuple[int, int]:
        return self._dead, len(self._recent)

    def reset(self) -> None:
        self._recent.clear()
        self._dead = 0
        self.tripped = False


class Lane:
    def __init__(
        self,
        *,
        source: Source,
        decoder: Decoder,
        transform: Callable[[Order], TransformResult],
        worker: DestinationWorker,
        office: DeadLetterOffice,
        limits: LaneLimits,
    ) -> None:
        self.name = worker.name
        self.worker = worker
        self._source = source
        self._decoder = decoder
        decoder.add_reader()
        self._transform = transform
        self._office = office
        self._limits = limits
        self._brake = DeadLetterBrake(ratio=limits.brake_ratio, window=limits.brake_window,
                                      minimum=limits.brake_min)  # fmt: skip
        self._progress: dict[int, PartitionProgress] = {}
        self._backlog: deque[Ticket] = deque()
        self._work = asyncio.Event()
        self._held: list[Ticket] = []  # dead letters waiting while the brake is on
        self._probe: asyncio.Task[None] | None = None
        self._probing = False
        self._brake_reason = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused = False
        self._last_store = 0.0
        self._last_poll = 0.0
        self._overflow = 0  # records taken at the bound by keep-alive polls
        self.in_flight = 0
        self.in_flight_bytes = 0
        self._record_size = 1024.0  # bytes, a running average of the records seen
        self.outcomes: Counter[str] = Counter()
        self.internal_errors = 0
        self.assigned_once = False
        self.last_message_at = time.monotonic()
        self._fetched_nothing = False  # the last poll that had room found no record

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._source.subscribe(self)
        processor = asyncio.create_task(self._process(), name=f"lane-{self.name}")
        try:
            while not stop.is_set() and not processor.done():
                got = self._poll_once()
                await asyncio.sleep(0 if got else IDLE_SLEEP_S)
            if processor.done():
                processor.result()  # a bug in the lane itself: surface it
            await self._drain()
        finally:
            tasks = [processor, *self._tasks, *([self._probe] if self._probe else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._source.close()

    def idle_for(self, seconds: float) -> bool:
        """Caught up: nothing in flight, and the last poll with room found nothing, after
        `seconds` without a record. Without that poll, a loop held up (a slow disk under a
        ledger commit) could look idle between a window settling and the next fetch."""
        return (
            self.assigned_once
            and self.in_flight == 0
            and self._fetched_nothing
            and time.monotonic() - self.last_message_at >= seconds
        )

    def _poll_once(self) -> int:
        """Fetch what the window has room for. At the bound, take nothing but one record a
        `KEEPALIVE_S` (that call serves rebalances and keeps the group membership): the
        records librdkafka prefetched stay where they are, ready the moment room is made.
        Only a window that stays full (`OVERFLOW` records taken that way: a vendor out for
        a while) pauses fetching, since a pause drops the prefetched records and a resume
        waits most of a second for the next fetch."""
        limits = self._limits
        room = min(
            limits.max_in_flight - self.in_flight,
            int((limits.max_in_flight_bytes - self.in_flight_bytes) / max(self._record_size, 1)),
        )
        now = time.monotonic()
        self._apply_backpressure(full=room <= 0)
        if room > 0:
            self._overflow = 0
            records = self._source.poll(min(POLL_BATCH, room))
            self._fetched_nothing = not records
        elif now - self._last_poll >= KEEPALIVE_S:
            records = self._source.poll(1)
            self._overflow += len(records)
        else:
            records = []
        if room > 0 or records or now - self._last_poll >= KEEPALIVE_S:
            self._last_poll = now
        for record in records:
            self._accept(record)
        if records:
            self.last_message_at = now
            self._work.set()
        if now - self._last_store >= STORE_EVERY_S:
            self._store_offsets()
        return len(records)

    def _apply_backpressure(self, *, full: bool) -> None:
        """Bounded in flight, by records and by bytes (see `_poll_once`): pause once the window
        overflowed by OVERFLOW records, resume below half of it."""
        limits = self._limits
        if not self._paused and full and self._overflow >= OVERFLOW:
            self._set_paused(True)
        elif (
            self._paused
            and self.in_flight <= limits.max_in_flight // 2
            and self.in_flight_bytes <= limits.max_in_flight_bytes // 2
        ):
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        if self._progress:
            (self._source.pause if paused else self._source.resume)(list(self._progress))
        self._paused = paused
        log.info("consumer.paused" if paused else "consumer.resumed", destination=self.name,
                 in_flight=self.in_flight, in_flight_bytes=self.in_flight_bytes)  # fmt: skip

    def _accept(self, record: RawRecord) -> None:
        progress = self._progress.get(record.partition)
        if progress is None:  # a record of a partition revoked in this very poll
            return
        progress.start(record.offset)
        self.in_flight += 1
        size = record.size
        self.in_flight_bytes += size
        # A running average, so one poll fetches about what the byte bound has room for.
        self._record_size += (size - self._record_size) / 16
        self._backlog.append(Ticket(self, record, progress))

    async def _process(self) -> None:
        turn_ends = time.monotonic() + YIELD_AFTER_S
        while True:
            if not self._backlog:
                self._work.clear()
                await self._work.wait()
                continue
            ticket = self._backlog.popleft()
            if ticket.abandoned:
                self._forget(ticket)
                continue
            try:
                self._handle(ticket)
            except SchemaPending as pending:
                self._backlog.appendleft(ticket)  # in order: nothing passes it meanwhile
                await self._decoder.fetch(pending.schema_id)
            except Exception as exc:  # a bug: retried, then dead-lettered; never stuck
                await self._internal_error(ticket, exc)
            if time.monotonic() >= turn_ends:
                await asyncio.sleep(0)  # let the poll loop and the workers run
                turn_ends = time.monotonic() + YIELD_AFTER_S

    def _handle(self, ticket: Ticket) -> None:
        """Decode, transform, hand over: synchronous; the outcome arrives through the ticket."""
        record = ticket.record
        try:
            where = (record.topic, record.partition, record.offset)
            order = self._decoder.decode_shared(where, record.value)
        except RecordError as exc:
            letter = DeadLetter(RECORD, exc.error_class, str(exc))
            self._dead_letter(ticket, letter, key=record.coordinates, payload_hash=ANY_PAYLOAD)
            return
        ticket.order = order
        faultpoints.fail_for(order.order_number)
        result = self._transform(order)
        if isinstance(result, Skip):
            self._finish(ticket, Outcome.SKIPPED)
        elif isinstance(result, Invalid):
            letter = DeadLetter(self.name, "invalid_for_destination", result.reason,
                                order_number=order.order_number)  # fmt: skip
            self._dead_letter(ticket, letter, key=order.order_number,
                              payload_hash=f"invalid:{result.reason}")  # fmt: skip
        else:
            outbound = Outbound.of(order.order_number, result)
            ticket.payload_hash = outbound.digest
            self.worker.submit(outbound, ticket)

    async def _internal_error(self, ticket: Ticket, exc: Exception) -> None:
        """Retry in place (nothing of the partition passes it), then dead-letter."""
        self.internal_errors += 1
        for attempt in range(self._limits.internal_error_retries):
            log.error("record.internal_error", destination=self.name, attempt=attempt + 1,
                      partition=ticket.partition, offset=ticket.offset,
                      error_type=type(exc).__name__, error=str(exc)[:500])  # fmt: skip
            await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
            if ticket.abandoned:
                self._forget(ticket)
                return
            try:
                self._handle(ticket)
                return
            except SchemaPending:
                self._backlog.appendleft(ticket)
                return
            except Exception as again:
                exc = again
        log.error("record.internal_error", destination=self.name, partition=ticket.partition,
                  offset=ticket.offset, error_type=type(exc).__name__, gave_up=True)  # fmt: skip
        order_number = ticket.order.order_number if ticket.order else None
        letter = DeadLetter(self.name, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}",
                            attempts=self._limits.internal_error_retries + 1,
                            order_number=order_number)  # fmt: skip
        self._dead_letter(ticket, letter, key=ticket.record.coordinates, payload_hash=ANY_PAYLOAD)

    # ---- outcomes ------------------------------------------------------------------------------

    def settled(self, ticket: Ticket, outcome: Outcome, error: RejectedError | None) -> None:
        """The worker's verdict on a record."""
        if outcome is not Outcome.REJECTED or error is None:
            self._finish(ticket, outcome)
            return
        order = ticket.order
        values = order.personal_values() if order is not None else ()
        letter = DeadLetter(self.name, error.error_class,
                            REDACTOR.scrub(error.message, values=values), status=error.status,
                            order_number=order.order_number if order else None)  # fmt: skip
        key = order.order_number if order is not None else ticket.record.coordinates
        self._dead_letter(ticket, letter, key=key, payload_hash=ticket.payload_hash)

    def _dead_letter(
        self, ticket: Ticket, letter: DeadLetter, *, key: str, payload_hash: str
    ) -> None:
        task = asyncio.create_task(self._dead_letter_until_done(ticket, letter, key, payload_hash))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dead_letter_until_done(
        self, ticket: Ticket, letter: DeadLetter, key: str, payload_hash: str
    ) -> None:
        """The record waits for its dead letter, however long: a bug on this path is logged
        and retried (the partition shows as stalled meanwhile), never dropped."""
        attempt = 0
        while True:
            try:
                await self._write_dead_letter(ticket, letter, key, payload_hash)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.internal_errors += 1
                log.error("dead_letter.internal_error", destination=self.name,
                          partition=ticket.partition, offset=ticket.offset,
                          error_type=type(exc).__name__, error=str(exc)[:500])  # fmt: skip
                await asyncio.sleep(min(0.5 * 2**attempt, 30.0))
                attempt += 1

    async def _write_dead_letter(
        self, ticket: Ticket, letter: DeadLetter, key: str, payload_hash: str
    ) -> None:
        # A record that never became an order is counted by the office, once for all lanes;
        # for the brake it counts in every lane (a wrong writer schema spoils them all).
        settled = Outcome.UNDECODABLE if letter.destination == RECORD else None
        if await self._office.already(letter.destination, key, payload_hash):
            self._finish(ticket, settled or Outcome.ALREADY_DEAD_LETTERED)
            return
        if self._brake.tripped:
            self._hold(ticket, letter)
            return
        # Counted before the write, so a burst of rejections in flight cannot outrun the brake.
        if self._brake.observe(dead_lettered=True):
            self._trip_brake()
            self._hold(ticket, letter)
            return
        outcome = await self._office.give_up(ticket.record, letter, key=key,
                                             payload_hash=payload_hash)  # fmt: skip
        self._finish(ticket, settled or Outcome(outcome))

    def _finish(self, ticket: Ticket, outcome: Outcome) -> None:
        if ticket.done:
            return
        ticket.done = True
        self.outcomes[outcome.value] += 1
        self._forget(ticket)
        if not ticket.progress.revoked:
            ticket.progress.finish(ticket.offset)
        if outcome in (Outcome.ABANDONED, Outcome.DEAD_LETTERED) or ticket.order is None:
            return  # dead letters were counted by the brake before they were written
        if self._probing:
            self._release_brake()  # the probe got through: the cause is gone
        else:
            self._brake.observe(dead_lettered=False)

    def _forget(self, ticket: Ticket) -> None:
        self.in_flight -= 1
        self.in_flight_bytes -= ticket.record.size

    # ---- the dead-letter brake -----------------------------------------------------------------

    def _trip_brake(self) -> None:
        dead, seen = self._brake.figures
        self._brake_reason = (f"dead-letter brake: {dead} of the last {seen} orders were "
                              "dead-lettered; a setting or a bug, not bad orders")  # fmt: skip
        log.error("destination.brake", destination=self.name, dead_lettered=dead, orders=seen)
        self.worker.hold(BRAKE, self._brake_reason)
        self._schedule_probe()

    def _hold(self, ticket: Ticket, letter: DeadLetter) -> None:
        """While the brake is on, a record bound for the dead-letter topic waits instead."""
        self._held.append(ticket)
        log.warning("destination.held", destination=self.name, partition=ticket.partition,
                    offset=ticket.offset, error_class=letter.error_class)  # fmt: skip
        if self._probing:  # the probe failed: stay paused, try again later
            self._probing = False
            self.worker.hold(BRAKE, self._brake_reason)
            self._schedule_probe()

    def _schedule_probe(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._probe_later())

    async def _probe_later(self) -> None:
        """After a pause, open the destination again and retry the oldest held record: the
        next order to settle decides. Anything but a dead letter means the cause is gone and
        the brake releases; another dead letter closes it again."""
        await asyncio.sleep(self._limits.probe_every_s)
        self._held = [t for t in self._held if not self._drop_if_abandoned(t)]
        self._probing = True
        self.worker.release_hold(BRAKE)
        if self._held:
            self._backlog.appendleft(self._held.pop(0))
            self._work.set()

    def _release_brake(self) -> None:
        log.info("destination.brake_released", destination=self.name, held=len(self._held))
        self._probing = False
        self._brake.reset()
        self.worker.release_hold(BRAKE)
        held, self._held = self._held, []
        self._backlog.extendleft(reversed(held))
        self._work.set()

    def _drop_if_abandoned(self, ticket: Ticket) -> bool:
        if ticket.abandoned:
            self._forget(ticket)
            return True
        return False

    # ---- offsets and rebalances ----------------------------------------------------------------

    def _store_offsets(self, only: list[int] | None = None) -> None:
        self._last_store = time.monotonic()
        for partition in only if only is not None else list(self._progress):
            progress = self._progress[partition]
            if (offset := progress.unstored()) is None:
                continue
            if self._source.store(partition, offset):
                progress.stored = offset
            else:  # refused: we stalled and were fenced; the partition is not ours any more
                self._forget_partitions([partition])

    def on_assigned(self, partitions: list[int]) -> None:
        self.assigned_once = True
        self.last_message_at = time.monotonic()  # idle counts from when there is work to fetch
        for partition in partitions:
            self._progress[partition] = PartitionProgress()
        if self._paused and partitions:
            self._source.pause(partitions)
        log.info("consumer.assigned", destination=self.name, partitions=sorted(partitions))

    def on_revoked(self, partitions: list[int]) -> None:
        mine = [p for p in partitions if p in self._progress]
        self._store_offsets(only=mine)
        self._forget_partitions(mine)
        log.info("consumer.revoked", destination=self.name, partitions=sorted(mine))

    def on_lost(self, partitions: list[int]) -> None:
        self._forget_partitions(partitions)
        log.warning("consumer.lost", destination=self.name, partitions=sorted(partitions))

    def _forget_partitions(self, partitions: list[int]) -> None:
        """Their records finish (the ledger records what was delivered, so the next owner
        skips it) but can no longer move any offset."""
        for partition in partitions:
            progress = self._progress.pop(partition, None)
            if progress is not None:
                progress.revoked = True

    async def _drain(self) -> None:
        """Shutdown: stop fetching, let in-flight records finish within the grace period, store
        and commit what completed. Unfinished records are re-read by the next owner."""
        if self.in_flight:
            log.info("consumer.draining", destination=self.name, in_flight=self.in_flight,
                     grace_s=self._limits.shutdown_grace_s)  # fmt: skip
            if not self._paused:
                self._set_paused(True)
            deadline = time.monotonic() + self._limits.shutdown_grace_s
            while self.in_flight and time.monotonic() < deadline:
                self._source.poll(1)  # keep the membership alive
                self._store_offsets()
                await asyncio.sleep(IDLE_SLEEP_S)
        self._store_offsets()
        self._source.commit()

    # ---- what operators see --------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        held = {p: round(pr.held_for(now), 1) for p, pr in self._progress.items()}
        dead, seen = self._brake.figures
        return {
            "state": self.worker.health.state,
            "reason": self.worker.health.reason,
            "kafka_healthy": self._source.healthy,
            "assigned_once": self.assigned_once,
            "partitions": sorted(self._progress),
            "in_flight": self.in_flight,
            "in_flight_bytes": self.in_flight_bytes,
            "fetching_paused": self._paused,
            "lag": self._source.lag(
                {p: progress.oldest_unfinished() for p, progress in self._progress.items()}
            ),
            "stalled_partitions": sorted(
                p for p, s in held.items() if s >= self._limits.stalled_record_s
            ),
            "oldest_record_s": max(held.values(), default=0.0),
            "brake": {
                "tripped": self._brake.tripped,
                "dead_lettered": dead,
                "orders": seen,
                "held": len(self._held),
            },
            "internal_errors": self.internal_errors + self.worker.internal_errors,
            "outcomes": dict(self.outcomes),
        }
