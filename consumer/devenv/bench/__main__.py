"""`python -m consumer.devenv.bench` (`make bench`): measure the service against its own CPU
ceiling, a raw Kafka drain and a naive consumer, in interleaved rounds on this machine; print the
table and the ratios, write `bench-results/<timestamp>.json` and a PNG plot. See the README's
"Benchmark" section for how to read it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consumer.devenv.bench import report
from consumer.devenv.bench.charts import plot
from consumer.devenv.bench.rounds import RUNS, Bench, Options, service_settings, staged
from consumer.devenv.bench.stage import (
    COMMIT_INTERVAL_MS,
    ROOT,
    StageError,
    baseline_problem,
    progress,
    scratch_dir,
)

SINK_HEADROOM = 3.0  # the sink must take at least this many times the busiest second's requests


def _number(kind: type[int] | type[float], minimum: float, *, above: bool = False,
            below: float = math.inf) -> Callable[[str], Any]:  # fmt: skip
    """An argparse type: a number at least (or above) `minimum` and below `below`, with a
    one-line error."""
    word = "above" if above else "at least"

    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            raise argparse.ArgumentTypeError(f"{text} must be {word} {minimum:g}")
        if value >= below:
            raise argparse.ArgumentTypeError(f"{text} must be below {below:g}")
        return value

    return convert


MAX_LATENCY_MS = 10_000.0
"""A sink answering this late times out the naive consumer's requests (10 s) and comes near
the service's own HTTP timeout (15 s): every run would fail after a minute or more."""
_latency = _number(float, 0, above=True, below=MAX_LATENCY_MS)


def _numbers(kind: type[int] | type[float], minimum: float, *, below: float = math.inf
             ) -> Callable[[str], tuple[Any, ...]]:  # fmt: skip
    one = _number(kind, minimum, below=below)

    def convert(text: str) -> tuple[Any, ...]:
        values = tuple(one(part) for part in text.split(",") if part.strip())
        if not values:
            raise argparse.ArgumentTypeError("give at least one value, e.g. 100,500")
        return values

    return convert


def parse(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    d = Options()
    runs_help = "; ".join(f"{name}: {what}" for name, what in RUNS.items())
    runs_help = runs_help.replace("%", "%%")  # argparse formats help with %
    p = argparse.ArgumentParser(prog="python -m consumer.devenv.bench", description=__doc__)
    p.add_argument("--orders", type=_number(int, 1), default=d.orders,
                   help="orders preloaded (A, B, D)")  # fmt: skip
    p.add_argument("--partitions", type=_number(int, 1), default=d.partitions)
    p.add_argument("--rounds", type=_number(int, 1), default=d.rounds)
    p.add_argument("--latency-ms", type=_latency, default=d.latency_ms,
                   help="the vendor latency of C, DL and the paced run")  # fmt: skip
    p.add_argument("--naive-seconds", type=_number(float, 0, above=True),
                   default=d.naive_seconds, help="C's time box")  # fmt: skip
    p.add_argument("--paced-seconds", type=_number(float, 0, above=True),
                   default=d.paced_seconds)  # fmt: skip
    p.add_argument("--sweep-orders", type=_number(int, 1), default=d.sweep_orders)
    p.add_argument("--in-flight", type=_numbers(int, 1), default=d.in_flight,
                   help="e.g. 100,500,2000")  # fmt: skip
    p.add_argument("--latencies", type=_numbers(float, 0, below=MAX_LATENCY_MS),
                   default=d.latencies,
                   help="e.g. 0,5,20,50")  # fmt: skip
    p.add_argument("--baseline", default=None, help="a git ref to measure B and D0/DL of too")
    p.add_argument("--runs", default=",".join(RUNS),
                   help=f"a subset of {','.join(RUNS)} ({runs_help})")  # fmt: skip
    p.add_argument("--sink-seconds", type=_number(float, 0, above=True), default=3.0,
                   help="the sink's own load test")  # fmt: skip
    p.add_argument("--out-dir", type=Path, default=ROOT / "bench-results")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to the JSON)")
    args = p.parse_args(argv)
    runs = tuple(r for r in args.runs.split(",") if r)
    unknown = set(runs) - set(RUNS)
    if unknown:
        p.error(f"unknown runs {sorted(unknown)}; choose from {','.join(RUNS)}")
    if not runs:
        p.error(f"--runs names no run; choose from {','.join(RUNS)}")
    if "paced" in runs and "DL" not in runs:
        p.error("the paced run paces at half of DL's rate: add DL to --runs")
    if args.baseline and (problem := baseline_problem(args.baseline)):
        p.error(f"--baseline {args.baseline}: {problem}")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        p.error(f"--plot {args.plot}: give the PNG file to write, e.g. results/plot.png")
    # Found out before ten minutes of measuring, not when the results are written.
    for label, directory in (("--out-dir", args.out_dir),
                             ("--plot", args.plot.parent if args.plot else None)):  # fmt: skip
        if directory is not None and (problem := _unwritable(directory)):
            p.error(f"{label} {directory}: {problem}")
    options = Options(orders=args.orders, partitions=args.partitions, rounds=args.rounds,
                      latency_ms=args.latency_ms, naive_seconds=args.naive_seconds,
                      paced_seconds=args.paced_seconds, sweep_orders=args.sweep_orders,
                      in_flight=args.in_flight, latencies=args.latencies,
                      baseline=args.baseline, runs=runs)  # fmt: skip
    return options, args


def _unwritable(directory: Path) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


class _Interrupt:
    """The first SIGINT, SIGTERM or SIGHUP stops the bench; later ones while it cleans up only
    say so (a second Ctrl-C must not leave a broker or its data directory behind)."""

    def __init__(self) -> None:
        self.received = False

    def __call__(self, _signum: int, _frame: Any) -> None:
        if self.received:
            progress("still stopping every process and removing temporary files; please wait")
            return
        self.received = True
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options, args = parse(argv)
    # Also SIGINT: a shell that starts us in the background hands it down ignored. SIGHUP: a
    # closed terminal or a dropped SSH session.
    interrupt = _Interrupt()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)
    started = time.time()
    load_before = os.getloadavg()
    settings = service_settings()
    lat = options.latency_ms
    batches = {"nibble": settings.nibble.batch_size, "nudgify": settings.nudgify.batch_size,
               "custobar": settings.custobar.batch_size}  # fmt: skip
    smallest = min(batches, key=lambda v: batches[v])
    concurrency = settings.delivery.concurrent_requests
    try:
        with contextlib.ExitStack() as stack:
            scratch = stack.enter_context(scratch_dir())
            stage = stack.enter_context(staged(options, stack, scratch))
            bench = Bench(options, stage)
            capacity = bench.sink_capacity(args.sink_seconds)
            bench.run()
            trees = [{"label": t.label, "commit": t.commit} for t in stage.trees]
            external, topic = stage.external, stage.topic.name
    except KeyboardInterrupt:
        progress("interrupted: every process stopped, temporary files removed")
        return 130
    except StageError as exc:
        progress(f"cannot start: {exc}")
        return 2
    for rnd in bench.rounds:
        rnd["ratios"] = report.round_ratios(
            rnd, latency_ms=lat, linger_ms=settings.delivery.linger_ms,
            concurrency=concurrency, batch=batches[smallest],
        )  # fmt: skip
    metrics = report.metrics(bench.rounds)
    summary = report.summarise(bench.rounds, metrics)
    ratios = report.summarise_ratios(bench.rounds)
    rates = [name for name, _ in metrics if name.startswith("D") and name.endswith("orders/s")]
    variation = report.variation_pct(summary, rates)
    runs = [r for rnd in bench.rounds for r in (*rnd["D"].values(), *rnd["D_old"].values()) if r]
    needed = max((r["peak_requests_per_s"] for r in runs), default=0.0)
    sink_cpu = max((r["sink_cpu_share"] for r in runs), default=0.0)
    sink_ok = capacity["requests_per_s"] >= SINK_HEADROOM * needed
    results = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": time.time() - started,
        "machine": {"cpus": os.cpu_count(), "load_before": load_before,
                    "load_after": os.getloadavg(), "python": platform.python_version()},
        "options": {**vars(options), "runs": list(options.runs)},
        "trees": trees,
        "broker": "KAFKA_BOOTSTRAP_SERVERS" if external else "the bench's own",
        "topic": topic,
        "settings": {"commit_interval_ms": COMMIT_INTERVAL_MS, "batches": batches,
                     "smallest_batch": smallest, "concurrency": concurrency,
                     "linger_ms": settings.delivery.linger_ms,
                     "max_in_flight": settings.max_in_flight},
        "sink": {**capacity, "needed_requests_per_s": needed, "headroom_ok": sink_ok,
                 "max_cpu_share": sink_cpu},
        "rounds": bench.rounds,
        "summary": summary,
        "ratios": ratios,
        "variation_pct": variation,
        "sweep": bench.sweep,
        "failures": bench.failures,
    }  # fmt: skip
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{stamp}.json"
    out.write_text(json.dumps(results, indent=1, default=str))
    try:
        return _report(results, bench, args, stamp, out, sink_ok=sink_ok)
    except KeyboardInterrupt:  # the measurements are kept: say where
        progress(f"interrupted after the measurements; results: {out}")
        return 130


def _report(results: dict[str, Any], bench: Bench, args: argparse.Namespace, stamp: str,
            out: Path, *, sink_ok: bool) -> int:  # fmt: skip
    """Draw the plot, print the tables; the exit code."""
    options, settings = bench.options, results["settings"]
    trees = results["trees"]
    summary = results["summary"]
    png = args.plot or args.out_dir / f"{stamp}.png"
    concurrency, smallest = settings["concurrency"], settings["smallest_batch"]
    batches, lat = settings["batches"], options.latency_ms
    if bench.sweep.get("in_flight") or bench.sweep.get("latency"):
        b = summary.get("B CPU ceiling orders/s", {}).get("median")
        plot(png, bench.sweep, ceiling=b, concurrency=concurrency, batch=batches[smallest],
             latency_ms=lat, title=f"order-consumer {trees[0]['commit']}, "
             f"{options.sweep_orders:,} orders, {os.cpu_count()} cores (shared)")  # fmt: skip
    print(report.render(results))
    print(f"\nresults: {out}" + (f"\nplot:    {png}" if png.exists() else ""))
    return 1 if bench.failures or not sink_ok else 0


if __name__ == "__main__":
    sys.exit(main())
