"""The paced run's two halves: a producer at a fixed rate whose record timestamps are kept, and
the latency of each (order, vendor) from that timestamp to the sink's 2xx answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import Producer

from consumer.devenv.bench.stage import order_key

WARM_UP_S = 5.0
"""The first seconds of pacing are left out of the percentiles (and reported apart). Their delay
is before the service: the broker took 70-145 ms (p50) to acknowledge the first second's
records, and the three lanes' consumers, which fetch independently, received each record
equally late (200-380 ms after its timestamp, against ~14 ms once settled). That lasted
0.5-3.5 s in six runs (7 s once, before the run waited for the service to settle); with it
counted, p99 read 224-648 ms, and 95-140 ms in the seconds after it."""


class Pacer(threading.Thread):
    """Produce orders [0, count) of `values` at `rate` per second, each with its Kafka
    timestamp (kept: latency is measured from it)."""

    def __init__(self, bootstrap: str, topic: str, values: Sequence[bytes], rate: float,
                 count: int) -> None:  # fmt: skip
        super().__init__(name="bench-pacer", daemon=True)
        # librdkafka's default linger (5 ms): a producer as a shop would run it. The record
        # timestamp is taken at produce(), so the producer's batching counts in the latency.
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": 1})
        # Connected and told the partitions' leaders before the first timed record: a shop's
        # producer runs for days, and its first second (~120 ms to an ack) is not the service's.
        self._producer.list_topics(topic, timeout=10)
        self._topic, self._values, self._rate, self._count = topic, values, rate, count
        self.timestamps: dict[int, float] = {}
        self.started_at: float | None = None  # wall time of the first record
        self.error: BaseException | None = None
        self._halt = threading.Event()  # not `_stop`: Thread has a method of that name

    def stop(self) -> None:
        """Produce no more (the run is over or interrupted; the thread ends within ~2 ms)."""
        self._halt.set()

    def run(self) -> None:
        try:
            self.started_at = time.time()
            started = time.monotonic()
            sent = 0
            while sent < self._count and not self._halt.is_set():
                due = min(self._count, int((time.monotonic() - started) * self._rate) + 1)
                while sent < due:
                    ms = int(time.time() * 1000)
                    self._producer.produce(self._topic, key=order_key(sent).encode(),
                                           value=self._values[sent], timestamp=ms)  # fmt: skip
                    self.timestamps[sent] = ms / 1000
                    sent += 1
                self._producer.poll(0)
                time.sleep(0.002)
            if self._halt.is_set():
                return
            if self._producer.flush(30) != 0:
                raise RuntimeError("paced records not acknowledged")
        except BaseException as exc:  # handed to the run, which fails with it
            self.error = exc


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def latencies(expected: dict[str, list[Any]], records: dict[str, list[Any]],
              produced: dict[int, float], *,
              warm_up_s: float = WARM_UP_S) -> dict[str, float | None]:  # fmt: skip
    """p50/p95/p99 (ms) of record timestamp → 2xx answer, over every (order, vendor) produced
    after the first `warm_up_s` of pacing; the warm-up's own p99 is reported beside them."""
    steady: list[float] = []
    warm_up: list[float] = []
    start = min(produced.values(), default=0.0)
    for vendor, keys in expected.items():
        index = {key: i for i, key in enumerate(keys) if key is not None}
        for _, answered, ks in records.get(vendor, []):
            for key in ks:
                i = index.get(key)
                if i is not None and i in produced:
                    at = produced[i]
                    (warm_up if at < start + warm_up_s else steady).append((answered - at) * 1000)
    if not steady:
        return {}
    result: dict[str, float | None] = {f"p{q}": percentile(steady, q) for q in (50, 95, 99)}
    return result | {
        "samples": len(steady),
        "warm_up_s": warm_up_s,
        "warm_up_p99": percentile(warm_up, 99) if warm_up else None,
    }
