"""The PNG the README shows: the service's throughput against its in-flight window
(`CONSUMER_MAX_IN_FLIGHT`) at the bench's vendor latency, and against the vendor latency at the
default window, with the CPU ceiling B and the latency bound concurrency x batch / latency drawn
in. matplotlib is a dev dependency: imported here only, and only when a plot is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def plot(path: Path, sweep: Mapping[str, Sequence[Mapping[str, Any]]], *, ceiling: float | None,
         concurrency: int, batch: int, latency_ms: float, title: str) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    window = sorted(sweep.get("in_flight", []), key=lambda p: p["value"])
    left.plot([p["value"] for p in window], [p["orders_per_s"] for p in window], "o-",
              label=f"service, vendor latency {latency_ms:g} ms")  # fmt: skip
    left.set_xscale("log")
    left.set_xlabel("CONSUMER_MAX_IN_FLIGHT (records per lane)")
    left.set_title("throughput vs in-flight window")

    latency = sorted(sweep.get("latency", []), key=lambda p: p["value"])
    xs = [p["value"] for p in latency]
    right.plot(xs, [p["orders_per_s"] for p in latency], "o-", label="service, default window")
    if xs:
        grid = [x for x in range(1, int(max(xs)) + 1)]
        bound = [concurrency * batch / (x / 1000) for x in grid]
        if ceiling:
            bound = [min(b, ceiling) for b in bound]
        right.plot(grid, bound, ":", color="grey",
                   label=f"min({concurrency} x {batch} / latency, B)")  # fmt: skip
    right.set_xlabel("vendor latency at the sink (ms)")
    right.set_title("throughput vs vendor latency")

    for axes in (left, right):
        if ceiling:
            axes.axhline(ceiling, linestyle="--", color="tab:red", label="B: CPU ceiling")
        axes.set_ylabel("orders/s (end to end, committed)")
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small", loc="best")
    figure.suptitle(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
