"""Run D: the real service, `python -m consumer run --idle-exit N` as OS processes, against the
sink, with a fresh consumer group and a fresh ledger per run, so every run does the same work.

    spawn ─▶ first `consumer.assigned` (t0) ─▶ … ─▶ every group committed the end (t_end) ─▶ TERM
             └── start-up: reported apart ──┘   └── the timed window: orders / (t_end - t0) ──┘

CPU is read from /proc/<pid>/stat (utime + stime) of the consumer processes every tick and taken
over the timed window; peak RSS is VmHWM. Which groups to watch is found, not assumed: this
service commits in one group per destination (`<group>-nibble`, …), earlier versions in one
group `<group>`; whichever of the two reaches the end first ends the run. A paced run produces
at a fixed rate while the service runs and reads each order's latency from the Kafka record
timestamp to the sink's 2xx answer.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from consumer.devenv.bench.sink import SinkProcess
from consumer.devenv.bench.stage import (
    DESTINATIONS,
    Children,
    CodeTree,
    Topic,
    end_offsets,
    new_group,
    order_key,
    service_env,
)
from consumer.devenv.kafka import create_topic
from consumer.devenv.postgres import create_database, drop_database

TICK_S = 0.1
COMMITTED_EVERY_S = 0.2
IDLE_EXIT_S = 30.0
"""A safety net only: the bench stops the processes as soon as the work is committed. Long, so
that a member whose partitions are done does not leave mid-run: a rebalance then would be
measured, not the service."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class RunFailed(RuntimeError):
    """A run that could not be measured: the message says why (with the log's tail)."""


@dataclass(frozen=True)
class ServiceSpec:
    latency_ms: float = 0
    ledger: str = "sqlite"  # or "postgresql"
    processes: int = 1
    max_in_flight: int | None = None  # None: the service's default
    paced_rate: float | None = None  # orders/s produced while the service runs
    paced_seconds: float = 10.0

    @property
    def label(self) -> str:
        parts = [f"D{self.latency_ms:g}", "pg" if self.ledger == "postgresql" else "sqlite",
                 f"x{self.processes}"]  # fmt: skip
        if self.max_in_flight is not None:
            parts.append(f"inflight={self.max_in_flight}")
        if self.paced_rate is not None:
            parts.append(f"paced@{self.paced_rate:.0f}/s")
        return " ".join(parts)


@dataclass
class ServiceResult:
    label: str
    orders: int
    orders_per_s: float
    window_s: float
    startup_s: float  # spawn → first partition assignment
    first_request_s: float  # spawn → first request at the sink
    cpu_us_per_order: float
    peak_rss_mb: float  # the largest VmHWM among the processes
    requests: dict[str, int]
    missing: dict[str, int]  # orders the sink never received, per vendor
    duplicates: dict[str, int]  # orders received more than once, per vendor
    layout: str  # "per-destination groups" or "one group"
    sink_cpu_share: float  # of one core, over the window
    service_cores: float  # the consumer processes' CPU over the window, in cores
    machine_busy_cores: float  # every process on the machine (it is shared), in cores
    peak_requests_per_s: float  # the busiest second at the sink, all vendors
    exit_codes: list[int]
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50/p95/p99 (paced runs)


@dataclass
class Context:
    bootstrap: str
    sink: SinkProcess
    topic: Topic
    tree: CodeTree
    children: Children
    scratch: Path
    keys: dict[str, list[Any]]  # per vendor, each order's key (None: skipped), from run B
    postgres_url: str | None = None


class Offsets:
    """Committed offsets of the candidate groups, through one long-lived client per group."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, groups: Sequence[str]) -> None:
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._clients = {g: Consumer({"bootstrap.servers": bootstrap, "group.id": g,
                                      "enable.auto.commit": False}) for g in groups}  # fmt: skip

    def reached(self, group: str, end: dict[int, int]) -> bool:
        committed = self._clients[group].committed(self._tps, timeout=10)
        return all(tp.offset >= end[tp.partition] for tp in committed)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def _cpu_and_rss(pid: int) -> tuple[float, float]:
    """(utime + stime in seconds, VmHWM in MiB) of a live process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024
    return cpu, rss


def _machine_busy() -> float:
    """CPU seconds spent by the whole machine so far (all cores, not idle, not iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def _first_assigned(logs: Sequence[Path]) -> float | None:
    """Wall-clock time of the first `consumer.assigned` event in the processes' JSON logs."""
    first = None
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if '"consumer.assigned"' not in line:
                continue
            try:
                moment = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            first = moment if first is None else min(first, moment)
    return first


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _interpolate(samples: Sequence[tuple[float, float]], moment: float) -> float:
    """The value of a monotonic series (time, value) at `moment`."""
    before = [s for s in samples if s[0] <= moment]
    after = [s for s in samples if s[0] >= moment]
    if not before:
        return samples[0][1]
    if not after:
        return samples[-1][1]
    (t1, v1), (t2, v2) = before[-1], after[0]
    return v1 if t2 == t1 else v1 + (v2 - v1) * (moment - t1) / (t2 - t1)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Pacer(threading.Thread):
    """Produce orders [0, count) of the topic's values at `rate` per second, each with its
    Kafka timestamp (kept: latency is measured from it)."""

    def __init__(self, bootstrap: str, topic: str, values: Sequence[bytes], rate: float,
                 count: int) -> None:  # fmt: skip
        super().__init__(name="bench-pacer", daemon=True)
        # librdkafka's default linger (5 ms): a producer as a shop would run it. The record
        # timestamp is taken at produce(), so the producer's batching counts in the latency.
        self._producer = Producer({"bootstrap.servers": bootstrap, "acks": 1})
        self._topic, self._values, self._rate, self._count = topic, values, rate, count
        self.timestamps: dict[int, float] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            sent = 0
            while sent < self._count:
                due = min(self._count, int((time.monotonic() - started) * self._rate) + 1)
                while sent < due:
                    ms = int(time.time() * 1000)
                    self._producer.produce(self._topic, key=order_key(sent).encode(),
                                           value=self._values[sent], timestamp=ms)  # fmt: skip
                    self.timestamps[sent] = ms / 1000
                    sent += 1
                self._producer.poll(0)
                time.sleep(0.002)
            if self._producer.flush(30) != 0:
                raise RuntimeError("paced records not acknowledged")
        except BaseException as exc:
            self.error = exc


def run_service(ctx: Context, spec: ServiceSpec, *, run_id: str,
                progress: Callable[[str], None]) -> ServiceResult:  # fmt: skip
    ctx.sink.reset(spec.latency_ms)
    topic, partitions, count = ctx.topic.name, ctx.topic.partitions, ctx.topic.records
    end: dict[int, int] | None = dict(ctx.topic.end_offsets)
    if spec.paced_rate is not None:
        topic = f"{ctx.topic.name}-paced-{run_id}"
        create_topic(ctx.bootstrap, topic, partitions=partitions)
        create_topic(ctx.bootstrap, f"{topic}.dlq", partitions=1)
        count = min(len(ctx.topic.values), max(1, int(spec.paced_rate * spec.paced_seconds)))
        end = None  # read once the pacer has produced everything
    group = new_group()
    database = f"bench_{run_id}".replace("-", "_")
    if spec.ledger == "postgresql":
        if ctx.postgres_url is None:
            raise RunFailed("no PostgreSQL server")
        ledger_url = create_database(ctx.postgres_url, database)
    else:
        ledger_url = f"sqlite:///{ctx.scratch / f'ledger-{run_id}.sqlite3'}"
    overrides = {}
    if spec.max_in_flight is not None:
        overrides["MAX_IN_FLIGHT"] = str(spec.max_in_flight)
    env = {**ctx.tree.python_env(), **service_env(
        bootstrap=ctx.bootstrap, sink_url=ctx.sink.url, topic=topic, group=group,
        ledger_url=ledger_url, overrides=overrides)}  # fmt: skip
    groups = [f"{group}-{d}" for d in DESTINATIONS]
    offsets = Offsets(ctx.bootstrap, topic, partitions, [*groups, group])
    logs = [ctx.scratch / f"consumer-{run_id}-{n}.log" for n in range(spec.processes)]
    spawned = time.time()
    processes = [
        ctx.children.spawn(
            [sys.executable, "-m", "consumer", "run", "--idle-exit", str(IDLE_EXIT_S)],
            log_path=log, env=env, cwd=ctx.tree.path)
        for log in logs
    ]  # fmt: skip
    samples: dict[int, list[tuple[float, float]]] = {p.pid: [] for p in processes}
    sink_samples: list[tuple[float, float]] = []
    machine_samples: list[tuple[float, float]] = []
    rss: dict[int, float] = {}
    pacer: Pacer | None = None
    try:
        if spec.paced_rate is not None:
            _wait_assigned(logs, processes)
            pacer = Pacer(ctx.bootstrap, topic, ctx.topic.values, spec.paced_rate, count)
            pacer.start()
        deadline = time.monotonic() + 60 + count / 20
        layout, last_check, last_report = "", 0.0, time.monotonic()
        while not layout:
            now = time.time()
            for process in processes:
                if process.poll() is not None:  # caught up and idle (exit 0) is no failure
                    if process.returncode != 0 or all(p.poll() is not None for p in processes):
                        raise RunFailed(f"consumer exited early with {process.returncode}:\n"
                                        f"{_tail(logs[processes.index(process)])}")  # fmt: skip
                    continue
                cpu, rss[process.pid] = _cpu_and_rss(process.pid)
                samples[process.pid].append((now, cpu))
            sink_samples.append((now, _cpu_and_rss(ctx.sink.pid)[0]))
            machine_samples.append((now, _machine_busy()))
            if pacer is not None and pacer.error is not None:
                raise RunFailed(f"pacing failed: {pacer.error}")
            producing = pacer is not None and pacer.is_alive()
            if not producing and time.monotonic() - last_check >= COMMITTED_EVERY_S:
                last_check = time.monotonic()
                if end is None:
                    end = end_offsets(ctx.bootstrap, topic, partitions)
                if all(offsets.reached(g, end) for g in groups):
                    layout = "per-destination groups"
                elif offsets.reached(group, end):
                    layout = "one group"
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                progress(f"    … {spec.label}: {time.time() - spawned:.0f} s")
            if time.monotonic() > deadline:
                raise RunFailed(f"not committed to the end in time:\n{_tail(logs[0])}")
            if not layout:
                time.sleep(TICK_S)
        finished = time.time()
        for process in processes:
            if process.poll() is None:
                cpu, rss[process.pid] = _cpu_and_rss(process.pid)
                samples[process.pid].append((finished, cpu))
        sink_samples.append((finished, _cpu_and_rss(ctx.sink.pid)[0]))
        machine_samples.append((finished, _machine_busy()))
    finally:
        codes = [ctx.children.stop(p) for p in processes]
        offsets.close()
        if pacer is not None:
            pacer.join(5)
        if spec.ledger == "postgresql" and ctx.postgres_url is not None:
            drop_database(ctx.postgres_url, database)
    records = ctx.sink.records()
    arrivals = [r[0] for rs in records.values() for r in rs]
    first_request = min(arrivals) if arrivals else finished
    started = _first_assigned(logs) or first_request
    window = max(finished - started, 1e-6)
    cpu = sum(_interpolate(s, finished) - _interpolate(s, started) for s in samples.values())
    sink_cpu = _interpolate(sink_samples, finished) - _interpolate(sink_samples, started)
    busy = _interpolate(machine_samples, finished) - _interpolate(machine_samples, started)
    expected = {v: keys[:count] for v, keys in ctx.keys.items()}
    missing, duplicates = _verify(expected, records)
    result = ServiceResult(
        label=spec.label, orders=count, orders_per_s=count / window, window_s=window,
        startup_s=started - spawned, first_request_s=first_request - spawned,
        cpu_us_per_order=cpu / count * 1e6, peak_rss_mb=max(rss.values()),
        requests={v: len(rs) for v, rs in records.items()}, missing=missing,
        duplicates=duplicates, layout=layout, sink_cpu_share=sink_cpu / window,
        service_cores=cpu / window, machine_busy_cores=busy / window,
        peak_requests_per_s=_peak_rate(arrivals), exit_codes=codes,
    )  # fmt: skip
    if pacer is not None:
        result.latency_ms = _latencies(expected, records, pacer.timestamps)
    return result


def _wait_assigned(logs: Sequence[Path], processes: Sequence[Any], timeout_s: float = 60) -> None:
    """Until the service holds its partitions (then the paced records measure the service,
    not its start-up)."""
    deadline = time.monotonic() + timeout_s
    while _first_assigned(logs) is None:
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            raise RunFailed(f"no partition assignment:\n{_tail(logs[0])}")
        time.sleep(TICK_S)
    time.sleep(1.0)  # every lane, not only the first


def _verify(
    expected: dict[str, list[Any]], records: dict[str, list[Any]]
) -> tuple[dict[str, int], dict[str, int]]:
    missing, duplicates = {}, {}
    for vendor, keys in expected.items():
        received = [key for _, _, ks in records.get(vendor, []) for key in ks]
        want = {key for key in keys if key is not None}
        missing[vendor] = len(want - set(received))
        duplicates[vendor] = len(received) - len(set(received))
    return missing, duplicates


def _peak_rate(arrivals: Sequence[float]) -> float:
    """Requests in the busiest whole second."""
    per_second: dict[int, int] = {}
    for moment in arrivals:
        per_second[int(moment)] = per_second.get(int(moment), 0) + 1
    return float(max(per_second.values(), default=0))


def _latencies(expected: dict[str, list[Any]], records: dict[str, list[Any]],
               produced: dict[int, float]) -> dict[str, float]:  # fmt: skip
    """p50/p95/p99 (ms) of record timestamp → 2xx answer, over every (order, vendor)."""
    values = []
    for vendor, keys in expected.items():
        index = {key: i for i, key in enumerate(keys) if key is not None}
        for _, answered, ks in records.get(vendor, []):
            for key in ks:
                i = index.get(key)
                if i is not None and i in produced:
                    values.append((answered - produced[i]) * 1000)
    if not values:
        return {}
    return {f"p{q}": percentile(values, q) for q in (50, 95, 99)} | {"samples": len(values)}
