"""The Kafka edge of a lane: one consumer in its destination's group, polled without blocking.

Everything Kafka happens on the asyncio loop's thread: `consume(timeout=0)` never blocks, so
rebalance callbacks run here too and the bookkeeping needs no locks. Offsets are stored only
for records the lane finished, and `enable.auto.offset.store=false` + auto-commit of *stored*
offsets means Kafka only ever commits what was stored (the confluent-kafka recommended
at-least-once pattern).

Also here: `seed_destination_groups`, the upgrade from one group for every destination to one
group per destination, which starts each new group where the old one had committed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from consumer.config import Settings
from consumer.errors import ConsumerError
from consumer.logs import get_logger
from consumer.pipeline import Rebalance
from consumer.records import RawRecord

log = get_logger(__name__)
NO_OFFSET = -1001  # librdkafka's OFFSET_INVALID: nothing committed
# librdkafka errors after which the session is not alive until a fetch succeeds again.
UNHEALTHY = frozenset(
    {
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._AUTHENTICATION,
        KafkaError._SSL,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
    }
)


def consumer_config(settings: Settings, group: str) -> dict[str, Any]:
    return {
        # Bounded prefetch: each lane has its own consumer (librdkafka's default is 64 MiB).
        "queued.max.messages.kbytes": 2048,
        # With a small local queue, librdkafka waits this long before fetching again once it
        # is full; its default (1 s) starves a lane that drains the queue in milliseconds.
        "fetch.queue.backoff.ms": 20,
        # The lanes of a process decode each record once only while they read the partitions
        # in step (decode.SHARED_MAX records apart at most). With librdkafka's 1 MiB of one
        # partition per fetch, a lane could move on to another partition than its siblings
        # and never meet them again: draining 40,000 orders decoded 75,053 in half the runs.
        "max.partition.fetch.bytes": 256 * 1024,
        # A member's id starts with its client id, and the assignor orders members by id: with
        # one client id for all lanes of a process, members that join together get the same
        # partitions in every destination's group, so the lanes of a process can share decodes.
        "client.id": f"order-consumer-{settings.instance_id}",
        **settings.kafka,
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": group,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.offset.store": False,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": settings.commit_interval_ms,
        "auto.offset.reset": settings.kafka.get("auto.offset.reset", "earliest"),
        "logger": logging.getLogger("librdkafka.consumer"),
    }


def _headers(message: Message) -> tuple[tuple[str, bytes], ...]:
    raw = message.headers()
    if not raw:
        return ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((str(k), v) for k, v in pairs if isinstance(v, bytes))


class KafkaSource:
    """One lane's consumer (`pipeline.Source`)."""

    def __init__(self, settings: Settings, group: str, *, consumer: Consumer | None = None):
        self._topic = settings.topic
        self._group = group
        config = consumer_config(settings, group)
        config["error_cb"] = self._on_error
        self._consumer = consumer or Consumer(config)
        self._listener: Rebalance | None = None
        self._error: str | None = None
        self._error_at = 0.0
        self._joined = False

    def subscribe(self, listener: Rebalance) -> None:
        self._listener = listener
        self._consumer.subscribe(
            [self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )  # fmt: skip
        log.info("consumer.started", topic=self._topic, group=self._group)

    def poll(self, max_records: int) -> list[RawRecord]:
        records: list[RawRecord] = []
        for message in self._consumer.consume(num_messages=max_records, timeout=0):
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka.message_error", group=self._group, code=error.name(),
                                error=error.str())  # fmt: skip
                if error.fatal():
                    raise KafkaException(error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue  # only error events lack these, and those were handled above
            kind, timestamp = message.timestamp()
            records.append(
                RawRecord(topic, partition, offset, message.key(), message.value(),
                          _headers(message), timestamp if kind != TIMESTAMP_NOT_AVAILABLE else -1)
            )  # fmt: skip
        if records:
            self._error = None  # fetching works: whatever was wrong is over
        return records

    def pause(self, partitions: list[int]) -> None:
        self._consumer.pause([TopicPartition(self._topic, p) for p in partitions])

    def resume(self, partitions: list[int]) -> None:
        self._consumer.resume([TopicPartition(self._topic, p) for p in partitions])

    def store(self, partition: int, offset: int) -> bool:
        """One partition per call: librdkafka reports a *partial* failure of a multi-partition
        store as success (the per-partition errors stay in its C list, which the Python binding
        does not hand back), so only a single-partition store tells whether it took."""
        try:
            self._consumer.store_offsets(offsets=[TopicPartition(self._topic, partition, offset)])
        except KafkaException as exc:
            log.warning("offsets.partition_rejected", group=self._group, partition=partition,
                        offset=offset, error=str(exc))  # fmt: skip
            return False
        return True

    def commit(self) -> None:
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offsets.commit_failed", group=self._group, error=str(exc))

    def lag(self, unfinished: dict[int, int | None]) -> dict[int, int]:
        """Records not yet settled behind the end of each partition: from the oldest record in
        flight, or from the fetch position when none is. Cached watermarks: no broker call."""
        if not unfinished:
            return {}
        tps = [TopicPartition(self._topic, p) for p in sorted(unfinished)]
        lag: dict[int, int] = {}
        try:
            for tp in self._consumer.position(tps):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                done_before = unfinished[tp.partition]
                start = done_before if done_before is not None else tp.offset
                if high >= 0 and start >= 0:
                    lag[tp.partition] = max(0, high - start)
        except (KafkaException, RuntimeError):  # RuntimeError: the consumer is closed
            return lag
        return lag

    @property
    def healthy(self) -> bool:
        """Joined the group, and no connection or authentication error since the last fetch."""
        return self._joined and self._error is None

    @property
    def error(self) -> str | None:
        return self._error

    def close(self) -> None:
        self._consumer.close()
        log.info("consumer.closed", group=self._group)

    def _on_error(self, error: KafkaError) -> None:
        log.warning("kafka.error", group=self._group, code=error.name(), error=error.str(),
                    fatal=error.fatal())  # fmt: skip
        if error.code() in UNHEALTHY or error.fatal():
            self._error, self._error_at = error.str(), time.monotonic()

    # Rebalance callbacks: called from inside consume(), on this thread.
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._joined = True
        self._error = None
        assert self._listener is not None
        self._listener.on_assigned([p.partition for p in partitions])

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._listener is not None
        self._listener.on_revoked([p.partition for p in partitions])
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("offsets.commit_failed", group=self._group, error=str(exc))

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assert self._listener is not None
        self._listener.on_lost([p.partition for p in partitions])


def committed_offsets(settings: Settings, group: str, *, wait_s: float = 15) -> dict[int, int]:
    """The group's committed offset per partition of the topic (absent: none committed).
    Retries while the group coordinator is still loading (a broker that just started)."""
    consumer = _offsets_client(settings, group)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                metadata = consumer.list_topics(settings.topic, timeout=10).topics[settings.topic]
                if metadata.error is not None:
                    raise KafkaException(metadata.error)
                tps = [TopicPartition(settings.topic, p) for p in sorted(metadata.partitions)]
                return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)
                        if tp.offset >= 0}  # fmt: skip
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if not error.retriable() and error.code() not in RETRY_COMMITTED:
                    raise
                if time.monotonic() > deadline:
                    raise ConsumerError(
                        f"cannot read the committed offsets of group {group}: {error.str()}"
                    ) from exc
                time.sleep(0.5)
    finally:
        consumer.close()


def _offsets_client(settings: Settings, group: str) -> Consumer:
    """A consumer that only reads and commits a group's offsets (never joins it)."""

    def report(error: KafkaError) -> None:
        log.warning("kafka.error", group=group, code=error.name(), error=error.str(),
                    fatal=error.fatal())  # fmt: skip

    return Consumer({**settings.kafka, "bootstrap.servers": settings.bootstrap_servers,
                     "group.id": group, "enable.auto.commit": False, "error_cb": report,
                     "logger": logging.getLogger("librdkafka.admin")})  # fmt: skip


RETRY_COMMITTED = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


def seed_destination_groups(settings: Settings, destinations: list[str]) -> dict[str, str]:
    """Start each destination's group where the shared group of earlier versions stopped.

    A destination group that has committed anything is left alone (it is running or ran).
    Without this an upgrade would replay the whole topic (harmless, the ledger skips it, but
    slow) or, with `auto.offset.reset=latest`, skip what arrived during the upgrade.
    Returns what was done per destination, for the log.
    """
    legacy = committed_offsets(settings, settings.group_id)
    done: dict[str, str] = {}
    for destination in destinations:
        group = settings.destination_group(destination)
        if committed_offsets(settings, group):
            done[destination] = "has offsets"
            continue
        if not legacy:
            done[destination] = "new"
            continue
        consumer = _offsets_client(settings, group)
        try:
            offsets = [TopicPartition(settings.topic, p, o) for p, o in sorted(legacy.items())]
            consumer.commit(offsets=offsets, asynchronous=False)
            done[destination] = f"seeded from {settings.group_id}"
            log.info("group.seeded", group=group, from_group=settings.group_id,
                     offsets={p: o for p, o in sorted(legacy.items())})  # fmt: skip
        except KafkaException as exc:  # members joined meanwhile: another instance seeded it
            done[destination] = f"not seeded: {exc.args[0].str()}"
        finally:
            consumer.close()
    return done
