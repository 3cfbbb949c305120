"""Fakes with real behaviour for the unit tier: an in-memory topic with consumer groups, a lane
source over it, a dead-letter sink, and vendors that hold what they accepted. The integration
tier runs the same code against the real broker and the vendor sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from consumer.decode import Decoder
from consumer.deliver.destination import Outbound
from consumer.deliver.retry import Backoff
from consumer.deliver.worker import DestinationWorker
from consumer.devenv.samples import encode_schemaless, load_schema
from consumer.errors import DeadLetterError, DeliveryError, RejectedError
from consumer.ledger import Ledger
from consumer.model import Order, Payload, TransformResult
from consumer.pipeline import Lane, LaneLimits, Rebalance
from consumer.records import DeadLetter, DeadLetterOffice, RawRecord

SCHEMA = load_schema()
FAST = Backoff(initial_s=0.001, maximum_s=0.01)


class MemoryTopic:
    """Partitions of records, and each consumer group's committed offsets."""

    def __init__(self, name: str = "orders", partitions: int = 3) -> None:
        self.name = name
        self.partitions: dict[int, list[RawRecord]] = {p: [] for p in range(partitions)}
        self.committed: dict[str, dict[int, int]] = {}
        self.clock = 1_790_000_000_000

    def append(self, partition: int, key: bytes | None, value: bytes | None) -> RawRecord:
        records = self.partitions[partition]
        self.clock += 1  # ms: the producer's clock, one tick a record
        record = RawRecord(self.name, partition, len(records), key, value, (), self.clock)
        records.append(record)
        return record

    def produce_orders(self, orders: Sequence[dict[str, Any]]) -> None:
        """Keyed by order number: one order's events share a partition, in order."""
        for order in orders:
            key = order["order_number"].encode()
            self.append(hash_partition(key, len(self.partitions)), key,
                        encode_schemaless(order, SCHEMA))  # fmt: skip

    def end_offsets(self) -> dict[int, int]:
        return {p: len(records) for p, records in self.partitions.items()}


def hash_partition(key: bytes, partitions: int) -> int:
    return sum(key) % partitions


class MemorySource:
    """One consumer group on a `MemoryTopic` (a `pipeline.Source`); stores commit at once."""

    def __init__(self, topic: MemoryTopic, group: str) -> None:
        self._topic = topic
        self._group = group
        self._listener: Rebalance | None = None
        self._positions: dict[int, int] = {}
        self._paused: set[int] = set()
        self.healthy = True

    def subscribe(self, listener: Rebalance) -> None:
        self._listener = listener

    def poll(self, max_records: int) -> list[RawRecord]:
        if self._listener is not None and not self._positions:
            committed = self._topic.committed.setdefault(self._group, {})
            self._positions = {p: committed.get(p, 0) for p in self._topic.partitions}
            self._listener.on_assigned(list(self._positions))
        found: list[RawRecord] = []
        for partition, position in self._positions.items():
            if partition in self._paused:
                continue
            chunk = self._topic.partitions[partition][position : position + max_records]
            self._positions[partition] = position + len(chunk)
            found.extend(chunk)
            max_records -= len(chunk)
            if max_records <= 0:
                break
        return found

    def pause(self, partitions: list[int]) -> None:
        self._paused.update(partitions)
        # As librdkafka does: what was fetched and not handed out is fetched again later.

    def resume(self, partitions: list[int]) -> None:
        self._paused.difference_update(partitions)

    def store(self, partition: int, offset: int) -> bool:
        self._topic.committed.setdefault(self._group, {})[partition] = offset
        return True

    def commit(self) -> None:
        pass

    def lag(self, unfinished: dict[int, int | None]) -> dict[int, int]:
        ends = self._topic.end_offsets()
        return {
            p: ends[p] - (done if done is not None else self._positions.get(p, 0))
            for p, done in unfinished.items()
        }

    def close(self) -> None:
        pass


class MemoryDeadLetters:
    """`failures`: the topic is unavailable that many times; `bugs`: an unexpected error."""

    def __init__(self, failures: int = 0, bugs: int = 0) -> None:
        self.letters: list[tuple[RawRecord, DeadLetter]] = []
        self.failures = failures
        self.bugs = bugs

    async def send(self, record: RawRecord, letter: DeadLetter) -> None:
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug on the dead-letter path")
        if self.failures:
            self.failures -= 1
            raise DeadLetterError("topic unavailable")
        self.letters.append((record, letter))


class Vendor:
    """A destination that holds what it accepted: the last payload per order where it updates,
    every payload otherwise. `rule` is its transform; `answer` may fail a request."""

    max_batch = 50

    def __init__(
        self,
        name: str,
        rule: Callable[[Order], TransformResult] | None = None,
        *,
        reject: set[str] | None = None,
        resend_changed: bool = False,
    ) -> None:
        self.name = name
        self.rule = rule or (lambda order: Payload(items=({"n": order.order_number,
                                                             "state": order.state},)))  # fmt: skip
        self.reject = reject or set()
        self.resend_changed = resend_changed
        self.answer: Callable[[list[str]], DeliveryError | None] = lambda numbers: None
        self.accepted: list[tuple[str, Any]] = []
        self.requests = 0

    def transform(self, order: Order) -> TransformResult:
        return self.rule(order)

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        self.requests += 1
        await asyncio.sleep(0)
        if (error := self.answer([o.order_number for o in batch])) is not None:
            raise error
        bad = {i: "no" for i, o in enumerate(batch) if o.order_number in self.reject}
        if bad:
            raise RejectedError("Bad Request.", status=400, culprits=bad)
        self.accepted.extend((o.order_number, o.items[0]) for o in batch)

    def holds(self) -> dict[str, Any]:
        return dict(self.accepted)

    async def aclose(self) -> None:
        pass


@dataclass
class Deployment:
    """Lanes over one topic as the service builds them, with fakes at the edges."""

    topic: MemoryTopic
    vendors: list[Vendor]
    ledger: Ledger
    sink: MemoryDeadLetters = field(default_factory=MemoryDeadLetters)
    max_in_flight: int = 2000
    max_in_flight_bytes: int = 64 << 20
    internal_error_retries: int = 2
    brake: tuple[float, int, int] = (1.0, 100, 20)  # ratio, window, minimum: off by default
    probe_every_s: float = 0.05
    lanes: list[Lane] = field(default_factory=list)

    def build(self) -> list[Lane]:
        office = DeadLetterOffice(self.sink, self.ledger, owner="t", backoff=FAST)
        limits = LaneLimits(
            max_in_flight=self.max_in_flight, max_in_flight_bytes=self.max_in_flight_bytes,
            shutdown_grace_s=2,
            internal_error_retries=self.internal_error_retries, stalled_record_s=0.2,
            brake_ratio=self.brake[0], brake_window=self.brake[1], brake_min=self.brake[2],
            probe_every_s=self.probe_every_s,
        )  # fmt: skip
        decoder = Decoder(reader_schema=SCHEMA, writer_schema=SCHEMA)
        self.lanes = [
            Lane(
                source=MemorySource(self.topic, f"group-{v.name}"),
                decoder=decoder,
                transform=v.transform,
                worker=DestinationWorker(
                    v,
                    self.ledger,
                    owner="t",
                    secret=b"k" * 16,
                    linger_s=0.002,
                    concurrency=2,
                    backoff=FAST,
                    credentials_retry_s=0.01,
                    lease_s=60,
                    internal_error_retries=self.internal_error_retries,
                ),
                office=office,
                limits=limits,
            )
            for v in self.vendors
        ]
        return self.lanes

    async def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        idle_s: float = 0.1,
        timeout_s: float = 60,
    ) -> None:
        """Run the lanes until `until()` holds, or until every lane is idle."""
        lanes = self.build()
        stop = asyncio.Event()
        for lane in lanes:
            lane.worker.start()
        runs = [asyncio.create_task(lane.run(stop)) for lane in lanes]
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            while asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
                if until is not None and until():
                    break
                if until is None and all(lane.idle_for(idle_s) for lane in lanes):
                    break
            else:
                raise TimeoutError("the lanes did not settle")
        finally:
            stop.set()
            await asyncio.gather(*runs)
            for lane in lanes:
                await lane.worker.aclose()

    def committed(self, vendor: str) -> dict[int, int]:
        return self.topic.committed.get(f"group-{vendor}", {})
