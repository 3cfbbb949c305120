"""`consumer rewind`: move the committed offsets of the destinations' consumer groups (replay),
while those groups are stopped.

Safe by construction: the ledger skips every order already delivered, so a rewind re-reads
without re-sending. The service runs one consumer group per destination
(`Settings.destination_group`): each chosen destination's group is rewound on its own. Nothing
is committed unless the partitions exist and every chosen group is empty: Kafka refuses a
commit from outside a group with live members ("Unknown member"), and a running consumer would
overwrite the rewind with its own commits anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from consumer.config import Settings

DESTINATIONS = ("nibble", "nudgify", "custobar")
TIMEOUT_S = 10.0
# A group coordinator that is still loading or moving answers these; they pass in seconds.
_COORDINATOR_BUSY = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE,
                     KafkaError.COORDINATOR_LOAD_IN_PROGRESS)  # fmt: skip


class RewindError(ValueError):
    """The rewind was refused or failed; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Move:
    partition: int
    old: int | None  # None: the group had committed nothing on this partition
    new: int


def enabled_destinations(settings: Settings) -> list[str]:
    flags = {"nibble": settings.nibble.enabled, "nudgify": settings.nudgify.enabled,
             "custobar": settings.custobar.enabled}  # fmt: skip
    return [name for name in DESTINATIONS if flags[name]]


MAX_OFFSET = 2**63


def parse_target(target: str) -> tuple[str, int]:
    """'earliest' | 'latest' | 'offset:N' | 'time:2026-11-01T00:00:00+00:00'."""
    if target == "earliest":
        return "offset", OFFSET_BEGINNING
    if target == "latest":
        return "offset", OFFSET_END
    kind, _, value = target.partition(":")
    if kind == "offset" and value.isascii() and value.isdigit():
        if int(value) >= MAX_OFFSET:
            raise ValueError(f"offset {value} is beyond any Kafka offset (< 2**63)")
        return "offset", int(value)
    if kind == "time":
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("a rewind time needs a zone, e.g. 2026-11-01T00:00:00+00:00")
        if moment.timestamp() < 0:
            raise ValueError("a rewind time is after 1970-01-01 (Kafka's timestamps start there)")
        return "time", int(moment.timestamp() * 1000)
    raise ValueError(f"unknown rewind target {target!r}")


def rewind(
    settings: Settings,
    target: str,
    *,
    destinations: Sequence[str],
    partitions: Sequence[int] | None = None,
) -> dict[str, list[Move]]:
    """Commit the target offsets for each destination's group; per destination, what moved."""
    kind, value = parse_target(target)
    if partitions is not None and min(partitions) < 0:
        raise RewindError(f"partition numbers start at 0, got {min(partitions)}")
    groups = {name: settings.destination_group(name) for name in destinations}
    base: dict[str, Any] = {**settings.kafka, "bootstrap.servers": settings.bootstrap_servers,
                            "logger": logging.getLogger("librdkafka.rewind")}  # fmt: skip
    targets = _resolve(base, settings.topic, kind, value, partitions)
    busy = live_members(AdminClient(base), list(groups.values()))
    if busy:
        described = "; ".join(
            f"{group} has {len(members)} live member(s): {', '.join(members)}"
            for group, members in busy.items()
        )
        raise RewindError(f"{described}. Stop the group first (every consumer in it), then rewind")
    moved: dict[str, list[Move]] = {}
    for name, group in groups.items():
        try:
            moved[name] = _commit(base, group, targets)
        except RewindError as exc:
            done = ", ".join(moved) or "none"
            raise RewindError(f"{exc} (already rewound: {done})") from exc
    return moved


def _resolve(
    base: Mapping[str, Any], topic: str, kind: str, value: int, partitions: Sequence[int] | None
) -> list[TopicPartition]:
    """The offsets to commit per partition, clamped to what the partition holds."""
    consumer = Consumer({**base, "group.id": "order-consumer-rewind-probe",
                         "enable.auto.commit": False})  # fmt: skip
    try:
        metadata = consumer.list_topics(topic, timeout=TIMEOUT_S).topics[topic]
        if metadata.error is not None:
            raise RewindError(f"cannot read topic {topic}: {metadata.error.str()}")
        available = sorted(metadata.partitions)
        missing = sorted(set(partitions or ()) - set(available))
        if missing:
            raise RewindError(
                f"topic {topic} has {len(available)} partition(s), 0 to {len(available) - 1}: "
                f"there is no partition {', '.join(map(str, missing))}"
            )
        chosen = available if partitions is None else sorted(set(partitions))
        targets = [TopicPartition(topic, p, value) for p in chosen]
        if kind == "time":
            targets = consumer.offsets_for_times(targets, timeout=TIMEOUT_S)
        resolved = []
        for tp in targets:
            low, high = consumer.get_watermark_offsets(tp, timeout=TIMEOUT_S)
            offset = tp.offset
            if offset == OFFSET_BEGINNING:
                offset = low
            elif offset in (OFFSET_END, -1):  # -1: no record at/after that time
                offset = high
            resolved.append(TopicPartition(topic, tp.partition, min(max(offset, low), high)))
        return resolved
    except KafkaException as exc:
        raise RewindError(f"cannot read topic {topic}: {exc.args[0].str()}") from exc
    finally:
        consumer.close()


def live_members(admin: AdminClient, groups: list[str]) -> dict[str, list[str]]:
    """Group → its live members (`client id on host`); empty and unknown groups are left out."""
    found: dict[str, list[str]] = {}
    deadline = time.monotonic() + TIMEOUT_S
    pending = groups
    while pending:
        retry = []
        for group, future in admin.describe_consumer_groups(
            pending, request_timeout=TIMEOUT_S
        ).items():
            try:
                description = future.result()
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() == KafkaError.GROUP_ID_NOT_FOUND:
                    continue
                if error.code() in _COORDINATOR_BUSY and time.monotonic() < deadline:
                    retry.append(group)
                    continue
                raise RewindError(f"cannot describe group {group}: {error.str()}") from exc
            if description.members:
                found[group] = [f"{m.client_id} on {m.host}" for m in description.members]
        pending = retry
        if pending:
            time.sleep(0.5)
    return found


def _commit(base: Mapping[str, Any], group: str, targets: list[TopicPartition]) -> list[Move]:
    consumer = Consumer({**base, "group.id": group, "enable.auto.commit": False})
    try:
        before = consumer.committed(targets, timeout=TIMEOUT_S)
        committed = consumer.commit(offsets=targets, asynchronous=False) or []
    except KafkaException as exc:
        raise RewindError(f"group {group}: the commit failed: {exc.args[0].str()}") from exc
    finally:
        consumer.close()
    for tp in committed:
        if tp.error is not None:
            raise RewindError(f"group {group}: the commit failed: {tp.error.str()}")
    old = {tp.partition: tp.offset for tp in before}
    return [
        Move(tp.partition, old[tp.partition] if old.get(tp.partition, -1) >= 0 else None, tp.offset)
        for tp in committed
    ]
