"""The Kafka edge: poll, hand records to the pipeline, pause/resume, rebalance, store offsets.

Everything Kafka happens on the asyncio loop's thread: `consume(timeout=0)` never blocks, so
rebalance callbacks run here too and the bookkeeping needs no locks. The pipeline's tasks run
concurrently on the same loop; a record's offset is stored only when its task finished, and
`enable.auto.offset.store=false` + auto-commit of *stored* offsets means Kafka only ever commits
what we stored (the confluent-kafka recommended at-least-once pattern).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.config import Settings
from consumer.logs import get_logger
from consumer.offsets import PartitionProgress
from consumer.pipeline import Pipeline, RawRecord

log = get_logger(__name__)
TP = tuple[str, int]
BATCH = 500
IDLE_SLEEP_S = 0.01
STORE_EVERY_S = 0.05


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka,
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": settings.group_id,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.offset.store": False,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": settings.commit_interval_ms,
        "auto.offset.reset": settings.kafka.get("auto.offset.reset", "earliest"),
        "logger": logging.getLogger("librdkafka.consumer"),
        "error_cb": _kafka_error,
    }


def _headers(message: Message) -> tuple[tuple[str, bytes], ...]:
    raw = message.headers()
    pairs = raw.items() if isinstance(raw, dict) else (raw or ())
    return tuple((str(k), v) for k, v in pairs if isinstance(v, bytes))


def _kafka_error(error: KafkaError) -> None:
    log.warning("kafka.error", code=error.name(), error=error.str(), fatal=error.fatal())


class Runner:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        *,
        on_tick: Callable[[], None] = lambda: None,
        consumer: Consumer | None = None,
    ) -> None:
        self._settings = settings
        self._pipeline = pipeline
        self._on_tick = on_tick  # e.g. serve the dead-letter producer's delivery callbacks
        self._consumer = consumer or Consumer(consumer_config(settings))
        self._progress: dict[TP, PartitionProgress] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused = False
        self._last_store = 0.0
        self.last_message_at = time.monotonic()
        self.assigned_once = False

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def assignment(self) -> list[TP]:
        return list(self._progress)

    async def run(self, stop: asyncio.Event, *, idle_exit_s: float | None = None) -> None:
        self._consumer.subscribe(
            [self._settings.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info("consumer.started", topic=self._settings.topic, group=self._settings.group_id)
        try:
            while not stop.is_set():
                got = self._poll_once()
                if idle_exit_s is not None and self._idle_for(idle_exit_s):
                    log.info("consumer.idle", idle_s=idle_exit_s)
                    break
                await asyncio.sleep(0 if got else IDLE_SLEEP_S)
            await self._drain(self._settings.shutdown_grace_s)
        finally:
            self._close()

    def _idle_for(self, seconds: float) -> bool:
        return (
            self.assigned_once
            and not self._tasks
            and time.monotonic() - self.last_message_at >= seconds
        )

    def _poll_once(self) -> int:
        self._apply_backpressure()
        room = max(0, self._settings.max_in_flight - len(self._tasks))
        messages = self._consumer.consume(num_messages=min(BATCH, room or 1), timeout=0)
        for message in messages:
            self._accept(message)
        self._on_tick()
        if time.monotonic() - self._last_store >= STORE_EVERY_S:
            self._store_offsets()
        return len(messages)

    def _apply_backpressure(self) -> None:
        """Bounded in flight: pause fetching at the bound, resume below 80% of it. Polling goes
        on either way, so a slow vendor never costs us our group membership."""
        limit = self._settings.max_in_flight
        if not self._paused and len(self._tasks) >= limit:
            self._set_paused(True)
        elif self._paused and len(self._tasks) <= limit * 0.8:
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        partitions = [TopicPartition(t, p) for t, p in self._progress]
        if partitions:
            (self._consumer.pause if paused else self._consumer.resume)(partitions)
        self._paused = paused
        log.info("consumer.paused" if paused else "consumer.resumed", in_flight=len(self._tasks))

    def _accept(self, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka.message_error", code=error.name(), error=error.str())
            if error.fatal():
                raise KafkaException(error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        if topic is None or partition is None or offset is None:
            return  # only error events lack these, and those returned above
        progress = self._progress.get((topic, partition))
        if progress is None:  # a message from a partition revoked in this very poll
            return
        self.last_message_at = time.monotonic()
        progress.start(offset)
        record = RawRecord(
            topic, partition, offset, message.key(), message.value(), _headers(message)
        )
        task = asyncio.create_task(self._process(record, progress))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, record: RawRecord, progress: PartitionProgress) -> None:
        try:
            await self._pipeline.process(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not a data problem: keep the offset behind this record so nothing is lost.
            log.exception("record.failed", partition=record.partition, offset=record.offset)
            return
        if not progress.revoked:
            progress.finish(record.offset)

    def _store_offsets(self, only: list[TP] | None = None) -> list[TopicPartition]:
        """Store each partition's contiguous done offset, one partition per call: librdkafka
        reports a *partial* failure of a multi-partition store as success (the per-partition
        errors stay in its C list, which the Python binding does not hand back), so only a
        single-partition store tells us whether it took. A refused partition is no longer ours
        (we stalled and were fenced): drop it."""
        self._last_store = time.monotonic()
        stored = []
        for tp in only if only is not None else list(self._progress):
            progress = self._progress[tp]
            if (offset := progress.unstored()) is None:
                continue
            partition = TopicPartition(tp[0], tp[1], offset)
            try:
                self._consumer.store_offsets(offsets=[partition])
            except KafkaException as exc:
                log.warning("offsets.partition_rejected", partition=partition.partition,
                            offset=partition.offset, error=str(exc))  # fmt: skip
                progress.revoked = True
                self._progress.pop(tp, None)
                continue
            progress.stored = offset
            stored.append(partition)
        return stored

    # Rebalance callbacks: called from inside consume(), on this thread.
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned_once = True
        self.last_message_at = time.monotonic()  # idle counts from when there is work to fetch
        for partition in partitions:
            self._progress[(partition.topic, partition.partition)] = PartitionProgress()
        if self._paused and partitions:
            self._consumer.pause(partitions)
        log.info("consumer.assigned", partitions=sorted(p.partition for p in partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [
            (p.topic, p.partition) for p in partitions if (p.topic, p.partition) in self._progress
        ]
        self._store_offsets(only=revoked)
        committable = [
            TopicPartition(t, p, stored)
            for t, p in revoked
            if (stored := self._progress[(t, p)].stored) is not None
        ]
        if committable:
            try:
                self._consumer.commit(offsets=committable, asynchronous=False)
            except KafkaException as exc:
                log.warning("offsets.commit_failed", error=str(exc))
        self._forget(revoked)
        log.info("consumer.revoked", partitions=sorted(p for _, p in revoked),
                 committed={p.partition: p.offset for p in committable})  # fmt: skip

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        lost = [(p.topic, p.partition) for p in partitions]
        self._forget(lost)
        log.warning("consumer.lost", partitions=sorted(p for _, p in lost))

    def _forget(self, tps: list[TP]) -> None:
        """In-flight records of these partitions finish (the ledger records their deliveries,
        so the next owner skips them) but can no longer move any offset."""
        for tp in tps:
            progress = self._progress.pop(tp, None)
            if progress is not None:
                progress.revoked = True

    async def _drain(self, grace_s: float) -> None:
        """Shutdown: stop fetching, let in-flight records finish within the grace period, store
        and commit what completed. Unfinished records are simply re-read by the next owner."""
        if self._tasks:
            log.info("consumer.draining", in_flight=len(self._tasks), grace_s=grace_s)
            if not self._paused:
                self._set_paused(True)
            deadline = time.monotonic() + grace_s
            while self._tasks and time.monotonic() < deadline:
                self._consumer.consume(num_messages=1, timeout=0)  # keep membership alive
                self._on_tick()
                self._store_offsets()
                await asyncio.sleep(IDLE_SLEEP_S)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._store_offsets()
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offsets.commit_failed", error=str(exc))

    def _close(self) -> None:
        self._consumer.close()
        log.info("consumer.closed")
