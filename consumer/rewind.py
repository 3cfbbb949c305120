"""`consumer rewind`: move the group's committed offsets (replay), while the group is stopped.

Safe by construction: the ledger skips every order already delivered, so a rewind re-reads
without re-sending. Kafka itself refuses the commit while the group has live members.
"""

from __future__ import annotations

from datetime import datetime

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

from consumer.config import Settings


def parse_target(target: str) -> tuple[str, int]:
    """'earliest' | 'latest' | 'offset:N' | 'time:2026-11-01T00:00:00+00:00'."""
    if target == "earliest":
        return "offset", OFFSET_BEGINNING
    if target == "latest":
        return "offset", OFFSET_END
    kind, _, value = target.partition(":")
    if kind == "offset" and value.isdigit():
        return "offset", int(value)
    if kind == "time":
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("a rewind time needs a zone, e.g. 2026-11-01T00:00:00+00:00")
        return "time", int(moment.timestamp() * 1000)
    raise ValueError(f"unknown rewind target {target!r}")


def rewind(settings: Settings, target: str, partitions: list[int] | None = None) -> dict[int, int]:
    """Commit the target offsets for the group; returns partition → new committed offset."""
    kind, value = parse_target(target)
    consumer = Consumer({**settings.kafka, "bootstrap.servers": settings.bootstrap_servers,
                         "group.id": settings.group_id, "enable.auto.commit": False})  # fmt: skip
    try:
        metadata = consumer.list_topics(settings.topic, timeout=10).topics[settings.topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        chosen = sorted(metadata.partitions) if partitions is None else partitions
        targets = [TopicPartition(settings.topic, p, value) for p in chosen]
        if kind == "time":
            targets = consumer.offsets_for_times(targets, timeout=10)
        resolved = []
        for tp in targets:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            offset = tp.offset
            if offset == OFFSET_BEGINNING:
                offset = low
            elif offset in (OFFSET_END, -1):  # -1: no record at/after that time
                offset = high
            resolved.append(
                TopicPartition(settings.topic, tp.partition, min(max(offset, low), high))
            )
        committed = consumer.commit(offsets=resolved, asynchronous=False) or []
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()
