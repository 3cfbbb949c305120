"""Run A, the raw drain: a plain confluent-kafka consumer in a fresh group reading the whole topic
and doing nothing with it. The most records per second Kafka hands one consumer on this machine;
timed from the partitions' assignment to the last record (the group join is start-up).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer

from consumer.devenv.bench.stage import Topic, new_group

TIMEOUT_S = 120.0


@dataclass(frozen=True)
class DrainResult:
    records: int
    records_per_s: float
    window_s: float
    startup_s: float  # subscribe → partitions assigned


def drain(bootstrap: str, topic: Topic) -> DrainResult:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": new_group(),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    try:
        subscribed = time.perf_counter()
        assigned: list[float] = []

        def on_assign(_consumer: Consumer, _partitions: list[Any]) -> None:
            assigned.append(time.perf_counter())

        consumer.subscribe([topic.name], on_assign=on_assign)
        remaining = {p: end for p, end in topic.end_offsets.items() if end > 0}
        first = 0.0
        count = 0
        deadline = time.monotonic() + TIMEOUT_S
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"drain: {sum(remaining.values())} records never came")
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is not None:
                    continue
                if not first:
                    first = time.perf_counter()
                count += 1
                partition, offset = message.partition(), message.offset()
                if (
                    partition is not None
                    and offset is not None
                    and offset + 1 >= remaining.get(partition, 1 << 62)
                ):
                    del remaining[partition]
        start = assigned[0] if assigned else first
        window = time.perf_counter() - start
    finally:
        consumer.close()
    return DrainResult(count, count / window, window, start - subscribed)
