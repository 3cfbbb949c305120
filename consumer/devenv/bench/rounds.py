"""The plan of one `make bench`: set the stage once (broker, sink and its own ceiling, PostgreSQL,
the preloaded topic, the baseline's worktree), then interleaved rounds of A, B, C and the D runs
(the baseline's B and D next to ours in the same round), then the sweeps for the plot once.
Every figure comes from this run; a run that fails is reported as failed, not left out silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from consumer import config
from consumer.devenv.bench import report
from consumer.devenv.bench.drain import drain
from consumer.devenv.bench.loadgen import sink_capacity
from consumer.devenv.bench.naive import naive
from consumer.devenv.bench.service import Context, RunFailed, ServiceSpec, run_service
from consumer.devenv.bench.sink import SinkProcess, running_sink
from consumer.devenv.bench.stage import (
    Children,
    CodeTree,
    Topic,
    baseline_tree,
    current_tree,
    end_offsets,
    preload,
    progress,
    reachable,
    remove_leftovers,
    service_env,
)
from consumer.devenv.kafka import create_topic, free_port, kafka_cluster
from consumer.devenv.postgres import postgres_server

CEILING = Path(__file__).resolve().parent / "ceiling.py"
RUNS = {  # every run `--runs` can name, and what it measures
    "A": "raw drain",
    "B": "CPU ceiling (run in the first round even when not asked for if a D, paced or sweep"
    " run will check the sink against its keys)",
    "C": "naive consumer at --latency-ms",
    "D0": "the service, SQLite ledger, vendors answering at once",
    "DL": "the service, SQLite ledger, vendors answering after --latency-ms",
    "pg": "D0 and DL with a PostgreSQL ledger",
    "2p": "D0 and DL with a PostgreSQL ledger and two processes in one group",
    "paced": "latency at 50% of DL's rate (needs DL)",
    "sweep": "MAX_IN_FLIGHT and vendor latency sweeps for the plot, once",
}


@dataclass
class Options:
    orders: int = 40_000  # two members settle ~6 s after spawn: 20,000 left them too little
    partitions: int = 6
    rounds: int = 3
    latency_ms: float = 20.0
    naive_seconds: float = 15.0
    paced_seconds: float = 10.0
    sweep_orders: int = 5_000
    in_flight: tuple[int, ...] = (100, 500, 2000, 8000)
    latencies: tuple[float, ...] = (0, 5, 20, 50)
    baseline: str | None = None
    runs: tuple[str, ...] = tuple(RUNS)


@dataclass
class Stage:
    bootstrap: str
    sink: SinkProcess
    topic: Topic
    sweep_topic: Topic | None
    trees: list[CodeTree]  # ours first, then the baseline
    children: Children
    scratch: Path
    postgres_url: str | None
    values_path: Path
    external: bool  # KAFKA_BOOTSTRAP_SERVERS: a cluster the bench did not start
    keys: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # tree label → keys


@contextlib.contextmanager
def staged(options: Options, stack: contextlib.ExitStack, scratch: Path) -> Iterator[Stage]:
    external = bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    needs_pg = any(run in options.runs for run in ("pg", "2p"))
    if external:
        progress("using the cluster at KAFKA_BOOTSTRAP_SERVERS; its own settings apply (a"
                 " group.initial.rebalance.delay.ms other than 3000 changes start-up and the"
                 " two-process runs)")  # fmt: skip
    parts = [
        *([] if external else ["the broker"]),
        "the sink",
        *(["PostgreSQL"] if needs_pg else []),
    ]
    listed = f"{', '.join(parts[:-1])} and {parts[-1]}" if len(parts) > 1 else parts[0]
    progress(f"starting {listed}")
    # A broker as in production: flushing left to the OS, a new group's first assignment
    # after Kafka's default 3 s (so the two processes of a 2p run are assigned together).
    broker = kafka_cluster(flush_every_message=False, initial_rebalance_delay_ms=3000)
    bootstrap = stack.enter_context(broker)
    # Unique on a shared cluster (another bench may start in the same second).
    name = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if external:
        reachable(bootstrap)
        stack.callback(remove_leftovers, bootstrap, name)
    sink = stack.enter_context(running_sink(free_port(), scratch / "sink.log"))
    postgres_url = stack.enter_context(postgres_server()) if needs_pg else None
    children = Children()
    stack.callback(children.stop_all)
    trees = [current_tree()]
    if options.baseline:
        progress(f"checking out the baseline {options.baseline} into a temporary worktree")
        trees.append(stack.enter_context(baseline_tree(options.baseline, scratch)))
    progress(f"preloading {options.orders:,} orders into {name} ({options.partitions} partitions)")
    values_path = scratch / "values.bin"
    topic = preload(bootstrap, name, orders=options.orders, partitions=options.partitions,
                    values_path=values_path)  # fmt: skip
    sweep_topic = None
    if "sweep" in options.runs:
        sweep_topic = _prefix_topic(bootstrap, topic, min(options.sweep_orders, options.orders))
    yield Stage(bootstrap, sink, topic, sweep_topic, trees, children, scratch, postgres_url,
                values_path, external)  # fmt: skip


def _prefix_topic(bootstrap: str, topic: Topic, orders: int) -> Topic:
    """A smaller topic holding the first `orders` of the preloaded ones (the sweeps' runs)."""
    from confluent_kafka import Producer

    from consumer.devenv.bench.stage import order_key

    name = f"{topic.name}-sweep"
    create_topic(bootstrap, name, partitions=topic.partitions)
    create_topic(bootstrap, f"{name}.dlq", partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i, value in enumerate(topic.values[:orders]):
        producer.produce(name, key=order_key(i).encode(), value=value)
        if i % 5000 == 4999:
            producer.flush()
    producer.flush(60)
    sweep = Topic(name, topic.partitions, topic.values[:orders])
    sweep.end_offsets = end_offsets(bootstrap, name, topic.partitions)
    return sweep


def ceiling(stage: Stage, tree: CodeTree) -> dict[str, Any]:
    """Run B in a subprocess against `tree`'s code; keep its keys for the D runs' checks."""
    out = stage.scratch / f"ceiling-{tree.commit}.json"
    env = {**tree.python_env(), **service_env(
        bootstrap=stage.bootstrap, sink_url=stage.sink.url, topic=stage.topic.name,
        group="bench-ceiling", ledger_url="sqlite:///unused.sqlite3")}  # fmt: skip
    done = subprocess.run([sys.executable, str(CEILING), str(stage.values_path), str(out)],
                          env=env, cwd=tree.path, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RunFailed(f"B failed on {tree.label}:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    stage.keys[tree.label] = result.pop("keys")
    result["orders_per_s"] = result["orders"] / result["wall_s"]
    result["cpu_us_per_order"] = result["cpu_s"] / result["orders"] * 1e6
    return result


def service_settings() -> config.Settings:
    """The service's defaults as the bench runs it (for concurrency, batch, linger, window)."""
    env = service_env(bootstrap="127.0.0.1:9", sink_url="http://127.0.0.1:9", topic="t",
                      group="g", ledger_url="sqlite:///unused.sqlite3")  # fmt: skip
    return config.load(env)


class Bench:
    def __init__(self, options: Options, stage: Stage) -> None:
        self.options = options
        self.stage = stage
        self.rounds: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.sweep: dict[str, list[dict[str, Any]]] = {}
        self._step = 0
        self._steps = self._count_steps()

    @property
    def _needs_keys(self) -> bool:
        """B runs at least once when a D run will be checked against the keys it found."""
        runs = self.options.runs
        return bool(self._specs()) or "paced" in runs or "sweep" in runs

    def _count_steps(self) -> int:
        runs = self.options.runs
        per_round = sum(1 for run in ("A", "B", "C", "paced") if run in runs)
        per_round += len(self._specs())
        if self.options.baseline:
            per_round += 1 + len(self._old_specs())  # the baseline's B runs in every round
        once = 1 if "B" not in runs and self._needs_keys else 0
        sweep = len(self._sweep_specs()) if "sweep" in runs else 0
        return per_round * self.options.rounds + once + sweep

    def _specs(self) -> list[ServiceSpec]:
        runs, lat = self.options.runs, self.options.latency_ms
        specs = []
        if "D0" in runs:
            specs.append(ServiceSpec(0))
        if "DL" in runs:
            specs.append(ServiceSpec(lat))
        for latency in (0, lat):
            if "pg" in runs:
                specs.append(ServiceSpec(latency, "postgresql"))
            if "2p" in runs:
                specs.append(ServiceSpec(latency, "postgresql", 2))
        return specs

    def _old_specs(self) -> list[ServiceSpec]:
        return [s for s in (ServiceSpec(0), ServiceSpec(self.options.latency_ms))
                if ("D0" if s.latency_ms == 0 else "DL") in self.options.runs]  # fmt: skip

    def _sweep_specs(self) -> list[ServiceSpec]:
        lat = self.options.latency_ms
        specs = [ServiceSpec(lat, max_in_flight=n) for n in self.options.in_flight]
        return specs + [ServiceSpec(x) for x in self.options.latencies]

    def _announce(self, where: str, what: str) -> None:
        self._step += 1
        progress(f"{where} · {what} ({self._step}/{self._steps})")

    def _attempt(self, where: str, what: str, run: Callable[[], Any]) -> Any:
        self._announce(where, what)
        try:
            return run()
        except Exception as exc:  # one run's failure is reported; the others still run
            message = f"{where} {what}: {exc}"
            self.failures.append(message)
            progress(f"FAILED {message}")
            return None

    def run(self) -> None:
        for number in range(1, self.options.rounds + 1):
            self.rounds.append(self._round(number))
        if "sweep" in self.options.runs:
            self.sweep = self._sweeps()

    def _round(self, number: int) -> dict[str, Any]:
        where = f"round {number}/{self.options.rounds}"
        stage, runs, ours = self.stage, self.options.runs, self.stage.trees[0]
        rnd: dict[str, Any] = {"D": {}, "D_old": {}}
        if "A" in runs:
            result = self._attempt(
                where, "A raw drain", lambda: drain(stage.bootstrap, stage.topic)
            )
            rnd["A"] = asdict(result) if result else None
        if "B" in runs or (self._needs_keys and number == 1):
            rnd["B"] = self._attempt(where, f"B CPU ceiling ({ours.commit})",
                                     lambda: ceiling(stage, ours))  # fmt: skip
        old = stage.trees[1] if len(stage.trees) > 1 else None
        if old is not None:
            rnd["B_old"] = self._attempt(where, f"B CPU ceiling, baseline {old.commit}",
                                         lambda: ceiling(stage, old))  # fmt: skip
        if "C" in runs:
            result = self._attempt(where, f"C naive consumer, {self.options.latency_ms:g} ms",
                                   lambda: naive(stage.bootstrap, stage.topic, stage.sink,
                                                 latency_ms=self.options.latency_ms,
                                                 seconds=self.options.naive_seconds))  # fmt: skip
            rnd["C"] = asdict(result) if result else None
        for spec in self._specs():
            rnd["D"][spec.label] = self._service(where, spec, ours, stage.topic, number)
        if old is not None:
            for spec in self._old_specs():
                rnd["D_old"][spec.label] = self._service(where, spec, old, stage.topic, number)
        if "paced" in runs:
            rnd["paced"] = self._paced(where, rnd, ours, number)
        return rnd

    def _service(self, where: str, spec: ServiceSpec, tree: CodeTree, topic: Topic,
                 number: int) -> dict[str, Any] | None:  # fmt: skip
        keys = self.stage.keys.get(tree.label)
        if keys is None:
            self._announce(where, spec.label)
            message = f"{where} {spec.label} ({tree.label}): not run, B failed (no keys to check)"
            self.failures.append(message)
            progress(f"FAILED {message}")
            return None
        stage = self.stage
        ctx = Context(stage.bootstrap, stage.sink, topic, tree, stage.children, stage.scratch,
                      keys, stage.postgres_url)  # fmt: skip
        run_id = f"{number}-{self._step + 1}"
        label = spec.label if tree is stage.trees[0] else f"{spec.label} [{tree.commit}]"
        result = self._attempt(where, label, lambda: run_service(ctx, spec, run_id=run_id,
                                                                 progress=progress))  # fmt: skip
        if result is None:
            return None
        r = result
        if any(r.missing.values()):
            # Its rate would count work it did not do: reported, left out of every summary.
            message = (
                f"{where} {label}: orders missing at the sink {r.missing}; its"
                f" {r.orders_per_s:,.0f} orders/s are left out of the medians and ratios"
            )
            self.failures.append(message)
            progress(f"FAILED {message}")
            return None
        progress(
            f"    {r.orders_per_s:,.0f} orders/s, {r.cpu_us_per_order:.0f} CPU-µs/order, peak RSS"
            f" {r.peak_rss_mb:.0f} MB; cores busy: service {r.service_cores:.2f}, machine"
            f" {r.machine_busy_cores:.2f}"
        )
        return asdict(result)

    def _paced(self, where: str, rnd: dict[str, Any], tree: CodeTree,
               number: int) -> dict[str, Any] | None:  # fmt: skip
        lat = self.options.latency_ms
        measured = (rnd["D"].get(report.d_key(lat)) or {}).get("orders_per_s")
        if not measured:
            self._announce(where, "paced latency run")
            self.failures.append(f"{where} paced: no D{lat:g} rate to pace at")
            return None
        spec = ServiceSpec(lat, paced_rate=measured / 2, paced_seconds=self.options.paced_seconds)
        result = self._service(where, spec, tree, self.stage.topic, number)
        if result and not result["latency_ms"]:
            message = f"{where} paced: no latency measured after the warm-up (raise --orders)"
            self.failures.append(message)
            progress(f"FAILED {message}")
            return None
        if result:
            p = result["latency_ms"]
            warm_up = p.get("warm_up_p99")
            progress(f"    latency p50 {p['p50']:.0f} ms, p95 {p['p95']:.0f}, p99 {p['p99']:.0f}"
                     + (f" (first {p['warm_up_s']:g} s, left out: p99 {warm_up:.0f})"
                        if warm_up is not None else ""))  # fmt: skip
        return result

    def _sweeps(self) -> dict[str, list[dict[str, Any]]]:
        sweep: dict[str, list[dict[str, Any]]] = {"in_flight": [], "latency": []}
        topic = self.stage.sweep_topic
        assert topic is not None
        for spec in self._sweep_specs():
            result = self._service("sweep", spec, self.stage.trees[0], topic, 0)
            if result is None:
                continue
            if spec.max_in_flight is not None:
                point = {"value": spec.max_in_flight, "orders_per_s": result["orders_per_s"]}
                sweep["in_flight"].append(point)
            else:
                point = {"value": spec.latency_ms, "orders_per_s": result["orders_per_s"]}
                sweep["latency"].append(point)
        return sweep

    def sink_capacity(self, seconds: float) -> dict[str, Any]:
        progress(f"measuring the sink's own ceiling ({seconds:g} s of load at latency 0)")
        capacity = sink_capacity(self.stage.sink.port, seconds=seconds)
        self.stage.sink.reset(0)
        return asdict(capacity)
