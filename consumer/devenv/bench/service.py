"""Run D: the real service, `python -m consumer run --idle-exit N` as OS processes, against the
sink, with a fresh consumer group and a fresh ledger per run, so every run does the same work.

    spawn ─▶ group settled (t0) ─▶ … ─▶ vendors' last 2xx (t_end) ─▶ all committed ─▶ TERM
             └─ start-up: apart ─┘   └─ timed: orders after t0 / (t_end - t0) ─┘

The group has settled at the last partition assignment or revocation in the processes' logs:
for one process that is its lanes' first assignment; for two, the second member's join (the
first member has been consuming meanwhile, and the rebalance moves half its partitions). The
orders every vendor had answered for before t0 are read from the sink's records and left out,
so a 2-process run measures two members sharing the partitions, not one member working alone
and then a rebalance. The run ends when every group committed the end, but the window ends at
the sink's last 2xx (the commit comes up to ~0.4 s after the work): both ends of the window
are read on the vendors' side. A paced run's window starts with its first produced record.

CPU is read from /proc/<pid>/stat (utime + stime) of the consumer processes every tick and taken
over the timed window; peak RSS is VmHWM. Which groups to watch is found, not assumed: this
service commits in one group per destination (`<group>-nibble`, …), earlier versions in one
group `<group>`; whichever of the two reaches the end first ends the run. A paced run produces
at a fixed rate while the service runs and reads each order's latency from the Kafka record
timestamp to the sink's 2xx answer.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.devenv.bench.paced import WARM_UP_S, Pacer, latencies
from consumer.devenv.bench.probes import (
    Offsets,
    Series,
    cpu_and_rss,
    first_assigned,
    last_rebalance,
    machine_busy,
    records_decoded,
    tail,
)
from consumer.devenv.bench.sink import SinkProcess
from consumer.devenv.bench.stage import (
    DESTINATIONS,
    Children,
    CodeTree,
    Topic,
    end_offsets,
    new_group,
    service_env,
)
from consumer.devenv.kafka import create_topic
from consumer.devenv.postgres import create_database, drop_database

TICK_S = 0.1
COMMITTED_EVERY_S = 0.2
MIN_WINDOW_SHARE = 0.5
IDLE_EXIT_S = 30.0
"""A safety net only: the bench stops the processes as soon as the work is committed. Long, so
that a member whose partitions are done does not leave mid-run: a rebalance then would be
measured, not the service."""
SETTLE_S = 5.0
"""The paced run starts this long after the service's first partition assignment. Its start-up
(three consumers joining, first connections and imports) and the previous run's teardown share
the two cores with the broker: with 1 s, the broker took 70-145 ms to acknowledge the first
paced records, they reached the service 200-380 ms late for 2-7 s, and p99 read 224-456 ms
against 125-154 ms once settled. Latency at 50% load is a steady-state figure."""


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
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50/p95/p99 (paced runs)
    window_share: float = 1.0  # of the orders, the share committed in the timed window
    # Records decoded per order run: 1 when the lanes of each process shared every decode
    # (None: the version measured does not say).
    decodes_per_order: float | None = None
    paced_rate: float | None = None  # orders/s produced while it ran (paced runs)


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


class ServiceRun:
    """One D run: set up its topic, group and ledger, spawn, watch, stop, measure."""

    def __init__(self, ctx: Context, spec: ServiceSpec, run_id: str,
                 progress: Callable[[str], None]) -> None:  # fmt: skip
        self.ctx, self.spec, self.run_id, self.progress = ctx, spec, run_id, progress
        self.topic, self.count = ctx.topic.name, ctx.topic.records
        self.end: dict[int, int] | None = dict(ctx.topic.end_offsets)
        self.group = new_group()
        self.database = f"bench_{run_id}".replace("-", "_")
        self.logs = [ctx.scratch / f"consumer-{run_id}-{n}.log" for n in range(spec.processes)]
        self.cpu: dict[int, Series] = {}
        self.rss: dict[int, float] = {}
        self.sink_cpu, self.machine = Series(), Series()
        self.pacer: Pacer | None = None

    def run(self) -> ServiceResult:
        self.ctx.sink.reset(self.spec.latency_ms)
        env = self._environment()
        offsets = Offsets(self.ctx.bootstrap, self.topic, self.ctx.topic.partitions,
                          [*self._groups, self.group])  # fmt: skip
        spawned = time.time()
        processes = [self._spawn(env, log) for log in self.logs]
        try:
            if self.spec.paced_rate is not None:
                self._wait_assigned(processes)
                self.pacer = Pacer(self.ctx.bootstrap, self.topic, self.ctx.topic.values,
                                   self.spec.paced_rate, self.count)  # fmt: skip
                self.pacer.start()
            layout = self._watch(processes, offsets, spawned)
            finished = time.time()
            self._sample(processes, finished)
        finally:
            codes = [self.ctx.children.stop(p) for p in processes]
            offsets.close()
            if self.pacer is not None:
                self.pacer.stop()  # interrupted: no record may recreate a deleted topic
                self.pacer.join(5)
            if self.spec.ledger == "postgresql" and self.ctx.postgres_url is not None:
                drop_database(self.ctx.postgres_url, self.database)
        return self._result(spawned, finished, layout, codes)

    @property
    def _groups(self) -> list[str]:
        return [f"{self.group}-{d}" for d in DESTINATIONS]

    def _environment(self) -> dict[str, str]:
        ctx, spec = self.ctx, self.spec
        if spec.paced_rate is not None:  # a topic of its own, filled while the service runs
            self.topic = f"{ctx.topic.name}-paced-{self.run_id}"
            create_topic(ctx.bootstrap, self.topic, partitions=ctx.topic.partitions)
            create_topic(ctx.bootstrap, f"{self.topic}.dlq", partitions=1)
            self.count = self._paced_count(spec.paced_rate, spec.paced_seconds)
            self.end = None  # read once the pacer has produced everything
        if spec.ledger == "postgresql":
            if ctx.postgres_url is None:
                raise RunFailed("no PostgreSQL server")
            ledger_url = create_database(ctx.postgres_url, self.database)
        else:
            ledger_url = f"sqlite:///{ctx.scratch / f'ledger-{self.run_id}.sqlite3'}"
        overrides = {}
        if spec.max_in_flight is not None:
            overrides["MAX_IN_FLIGHT"] = str(spec.max_in_flight)
        settings = service_env(
            bootstrap=ctx.bootstrap,
            sink_url=ctx.sink.url,
            topic=self.topic,
            group=self.group,
            ledger_url=ledger_url,
            overrides=overrides,
        )
        return {**ctx.tree.python_env(), **settings}

    def _paced_count(self, rate: float, seconds: float) -> int:
        """Orders to produce: `rate` for the warm-up and `seconds`, as far as the preloaded
        values reach (a shorter pacing is said; one that ends within the warm-up fails)."""
        available = len(self.ctx.topic.values)
        wanted = max(1, int(rate * (seconds + WARM_UP_S)))
        if available >= wanted:
            return wanted
        measured_s = available / rate - WARM_UP_S
        if measured_s < 1:
            raise RunFailed(
                f"too few orders to pace at {rate:,.0f}/s: {WARM_UP_S:g} s of warm-up and"
                f" {seconds:g} s measured need {wanted:,}, --orders is {available:,}"
            )
        self.progress(f"    ! paced: {available:,} orders last {measured_s:.1f} s after the"
                      f" warm-up at {rate:,.0f}/s, not {seconds:g} s: raise --orders")  # fmt: skip
        return available

    def _spawn(self, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        process = self.ctx.children.spawn(
            [sys.executable, "-m", "consumer", "run", "--idle-exit", str(IDLE_EXIT_S)],
            log_path=log, env=env, cwd=self.ctx.tree.path,
        )  # fmt: skip
        self.cpu[process.pid] = Series()
        return process

    def _sample(self, processes: Sequence[subprocess.Popen[bytes]], now: float) -> None:
        for process in processes:
            if process.poll() is None:
                cpu, self.rss[process.pid] = cpu_and_rss(process.pid)
                self.cpu[process.pid].add(now, cpu)
        self.sink_cpu.add(now, cpu_and_rss(self.ctx.sink.pid)[0])
        self.machine.add(now, machine_busy())

    def _watch(self, processes: Sequence[subprocess.Popen[bytes]], offsets: Offsets,
               spawned: float) -> str:  # fmt: skip
        """Sample every tick until the committed offsets reach the end; return which group
        layout got there."""
        deadline = time.monotonic() + 60 + self.count / 20
        last_check, last_report = 0.0, time.monotonic()
        while True:
            self._check_alive(processes)
            self._sample(processes, time.time())
            producing = self.pacer is not None and self.pacer.is_alive()
            if not producing and time.monotonic() - last_check >= COMMITTED_EVERY_S:
                last_check = time.monotonic()
                if self.end is None:
                    self.end = end_offsets(self.ctx.bootstrap, self.topic,
                                           self.ctx.topic.partitions)  # fmt: skip
                end = self.end
                committed = {g: offsets.committed(g) for g in [*self._groups, self.group]}
                if all(_reached(committed[g], end) for g in self._groups):
                    return "per-destination groups"
                if _reached(committed[self.group], end):
                    return "one group"
            if time.monotonic() - last_report >= 5:
                last_report = time.monotonic()
                self.progress(f"    … {self.spec.label}: {time.time() - spawned:.0f} s")
            if time.monotonic() > deadline:
                raise RunFailed(f"not committed to the end in time:\n{tail(self.logs[0])}")
            time.sleep(TICK_S)

    def _check_alive(self, processes: Sequence[subprocess.Popen[bytes]]) -> None:
        if self.pacer is not None and self.pacer.error is not None:
            raise RunFailed(f"pacing failed: {self.pacer.error}")
        for n, process in enumerate(processes):
            code = process.poll()
            # A member caught up and idle (exit 0) is no failure while another one works.
            if code is not None and (code != 0 or all(p.poll() is not None for p in processes)):
                raise RunFailed(f"consumer exited early with {code}:\n{tail(self.logs[n])}")

    def _wait_assigned(self, processes: Sequence[subprocess.Popen[bytes]]) -> None:
        """Until the service holds its partitions (then the paced records measure the service,
        not its start-up)."""
        deadline = time.monotonic() + 60
        while first_assigned(self.logs) is None:
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                raise RunFailed(f"no partition assignment:\n{tail(self.logs[0])}")
            time.sleep(TICK_S)
        time.sleep(SETTLE_S)

    def _result(self, spawned: float, finished: float, layout: str,
                codes: list[int]) -> ServiceResult:  # fmt: skip
        records = self.ctx.sink.records()
        arrivals = [r[0] for rs in records.values() for r in rs]
        first_request = min(arrivals) if arrivals else finished
        first = first_assigned(self.logs) or first_request
        settled = last_rebalance(self.logs, before=finished)
        started = first if settled is None else max(first, settled)
        startup = started - spawned
        if self.pacer is not None and self.pacer.started_at is not None:
            # Its work starts with the first paced record, SETTLE_S after the assignment: timed
            # from there, its rate is the load it kept up with, and its CPU is at that load.
            started = max(started, self.pacer.started_at)
        # The work ends with the vendors' last 2xx: the commit that shows it comes up to
        # ~0.4 s later (commit interval and sampling), which made rates err low by 4-8%.
        answered = max((r[1] for rs in records.values() for r in rs), default=finished)
        ended = min(finished, answered) if answered > started else finished
        expected = {v: keys[: self.count] for v, keys in self.ctx.keys.items()}
        # What was done before t0 (a member working alone before a late join) is left out,
        # read from the same clock as the end: the vendors' answers, not the lagging commits.
        measured = max(self.count - _delivered_by(expected, records, started), 1)
        window = max(ended - started, 1e-6)
        cpu = sum(series.between(started, ended) for series in self.cpu.values())
        missing, duplicates = _verify(expected, records)
        result = ServiceResult(
            label=self.spec.label, orders=measured, orders_per_s=measured / window,
            window_s=window, startup_s=startup,
            first_request_s=first_request - spawned,
            cpu_us_per_order=cpu / measured * 1e6, peak_rss_mb=max(self.rss.values()),
            requests={v: len(rs) for v, rs in records.items()}, missing=missing,
            duplicates=duplicates, layout=layout,
            sink_cpu_share=self.sink_cpu.between(started, ended) / window,
            service_cores=cpu / window,
            machine_busy_cores=self.machine.between(started, ended) / window,
            peak_requests_per_s=_peak_rate(arrivals), exit_codes=codes,
        )  # fmt: skip
        result.window_share = measured / self.count
        decoded = records_decoded(self.logs)
        result.decodes_per_order = None if decoded is None else decoded / self.count
        if result.window_share < MIN_WINDOW_SHARE:
            # A rebalance late in the run leaves a window too short to trust (commit lag counts
            # for more in it): say so instead of printing a rate that errs high.
            self.progress(f"    ! {self.spec.label}: the group settled late; only "
                          f"{result.window_share:.0%} of the orders fall in the timed window: "
                          "raise --orders")  # fmt: skip
        if self.pacer is not None:
            result.latency_ms = latencies(expected, records, self.pacer.timestamps)
            result.paced_rate = self.spec.paced_rate
        return result


def run_service(ctx: Context, spec: ServiceSpec, *, run_id: str,
                progress: Callable[[str], None]) -> ServiceResult:  # fmt: skip
    return ServiceRun(ctx, spec, run_id, progress).run()


def _reached(committed: dict[int, int], end: dict[int, int]) -> bool:
    return all(offset >= end[p] for p, offset in committed.items())


def _delivered_by(
    expected: dict[str, list[Any]], records: dict[str, list[Any]], moment: float
) -> int:
    """Orders that every vendor meant to get them had answered 2xx for by `moment` (an order no
    vendor gets is never counted: it costs next to nothing, and nothing says when it was done)."""
    answered: dict[str, dict[Any, float]] = {}
    for vendor, requests in records.items():
        first = answered.setdefault(vendor, {})
        for _, at, keys in requests:
            for key in keys:
                first[key] = min(first.get(key, at), at)
    count = len(next(iter(expected.values()), []))
    done = 0
    for i in range(count):
        times = [answered.get(v, {}).get(keys[i], float("inf"))
                 for v, keys in expected.items() if keys[i] is not None]  # fmt: skip
        done += max(times, default=float("inf")) <= moment
    return done


def _verify(
    expected: dict[str, list[Any]], records: dict[str, list[Any]]
) -> tuple[dict[str, int], dict[str, int]]:
    """(missing, repeated) orders per vendor: keys B saw that the sink did not, and keys the
    sink received more than once."""
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
