"""From the rounds' measurements to what the team reads: per round the ratios (computed inside
the round, where runs shared the machine's state), then the median and min/max over the rounds,
and the spread that says how far to trust a difference. Plain functions over plain dicts: the
same dicts are written as JSON.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

RSS_TARGET_MB = 150.0
LATENCY_SLACK_MS = 50.0

Round = dict[str, Any]


def d_key(latency_ms: float, ledger: str = "sqlite", processes: int = 1) -> str:
    return f"D{latency_ms:g} {'pg' if ledger == 'postgresql' else 'sqlite'} x{processes}"


def _get(data: Mapping[str, Any], *path: str) -> float | None:
    value: Any = data
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, int | float) else None


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return top / bottom if top is not None and bottom else None


def round_ratios(rnd: Round, *, latency_ms: float, linger_ms: float, concurrency: int,
                 batch: int) -> dict[str, float | None]:  # fmt: skip
    """The ratios the team tracks, for one round."""
    b = _get(rnd, "B", "orders_per_s")
    rate = {key: _get(rnd, "D", key, "orders_per_s") for key in rnd.get("D", {})}
    lat = latency_ms
    bound = min(concurrency * batch / (lat / 1000), b) if b else None
    p99 = _get(rnd, "paced", "latency_ms", "p99")
    rss = max((_get(r, "peak_rss_mb") or 0 for r in rnd.get("D", {}).values()), default=None)

    def d(latency: float, ledger: str = "sqlite", processes: int = 1) -> float | None:
        return rate.get(d_key(latency, ledger, processes))

    def old(latency: float) -> float | None:
        return _get(rnd, "D_old", d_key(latency), "orders_per_s")

    pg = "postgresql"
    ratios = {
        "B / old B": _ratio(b, _get(rnd, "B_old", "orders_per_s")),
        "D0 / B": _ratio(d(0), b),
        f"D{lat:g} / min(c*b/L, B)": _ratio(d(lat), bound),
        "PostgreSQL / SQLite (D0)": _ratio(d(0, pg), d(0)),
        f"PostgreSQL / SQLite (D{lat:g})": _ratio(d(lat, pg), d(lat)),
        "2 processes / 1 (D0, pg)": _ratio(d(0, pg, 2), d(0, pg)),
        f"2 processes / 1 (D{lat:g}, pg)": _ratio(d(lat, pg, 2), d(lat, pg)),
        "p99 / (linger + 3L + 50 ms)": _ratio(p99, linger_ms + 3 * lat + LATENCY_SLACK_MS),
        "peak RSS / 150 MB": _ratio(rss, RSS_TARGET_MB) if rss else None,
        f"D{lat:g} / C": _ratio(d(lat), _get(rnd, "C", "orders_per_s")),
        "D0 / old D0": _ratio(d(0), old(0)),
        f"D{lat:g} / old D{lat:g}": _ratio(d(lat), old(lat)),
    }
    return ratios


TARGETS = {"p99 / (linger + 3L + 50 ms)": 1.0, "peak RSS / 150 MB": 1.0}


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "rounds": len(values)}  # fmt: skip


def summarise(rounds: Sequence[Round], metrics: Iterable[tuple[str, Sequence[str]]]
              ) -> dict[str, dict[str, float]]:  # fmt: skip
    """Median and min/max over the rounds of each metric present in at least one round."""
    summary = {}
    for name, path in metrics:
        values = [v for rnd in rounds if (v := _get(rnd, *path)) is not None]
        if values:
            summary[name] = spread(values)
    return summary


def summarise_ratios(rounds: Sequence[Round]) -> dict[str, dict[str, float]]:
    names: dict[str, None] = {}
    for rnd in rounds:
        names.update(dict.fromkeys(rnd.get("ratios", {})))
    summary = {}
    for name in names:
        values = [v for rnd in rounds if (v := rnd["ratios"].get(name)) is not None]
        if values:
            summary[name] = spread(values)
    return summary


def variation_pct(summary: Mapping[str, Mapping[str, float]], names: Iterable[str]) -> float:
    """The largest half-range over the median among `names`, in percent: 'figures vary ±X%'."""
    spreads = [
        (s["max"] - s["min"]) / 2 / s["median"] * 100
        for name in names
        if (s := summary.get(name)) is not None and s["median"] and s["rounds"] > 1
    ]
    return max(spreads, default=0.0)


ROWS = (
    ("A raw drain", "A", ("records/s",)),
    ("B CPU ceiling", "B", ("orders/s", "CPU-µs/order")),
    ("old B CPU ceiling", "B_old", ("orders/s", "CPU-µs/order")),
    ("C naive consumer", "C", ("orders/s",)),
)
D_METRICS = {
    "orders/s": "orders_per_s",
    "CPU-µs/order": "cpu_us_per_order",
    "peak RSS MB": "peak_rss_mb",
    "start-up s": "startup_s",
    "busy cores": "service_cores",
    "decodes/order": "decodes_per_order",
}
FIELDS = {"records/s": "records_per_s", **D_METRICS}


def metrics(rounds: Sequence[Round]) -> list[tuple[str, tuple[str, ...]]]:
    """(name, path into a round) of every figure summarised: '<run> <metric>'."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for row, key, names in ROWS:
        found += [(f"{row} {name}", (key, FIELDS[name])) for name in names]
    labels: dict[tuple[str, str], None] = {}
    for rnd in rounds:
        labels.update(dict.fromkeys(("D", label) for label in rnd.get("D", {})))
        labels.update(dict.fromkeys(("D_old", label) for label in rnd.get("D_old", {})))
    for group, label in labels:
        row = label if group == "D" else f"old {label}"
        found += [(f"{row} {name}", (group, label, field)) for name, field in D_METRICS.items()]
    found += [(f"paced {q} ms", ("paced", "latency_ms", q))
              for q in ("p50", "p95", "p99", "warm_up_p99")]  # fmt: skip
    found += [(f"paced {name}", ("paced", field)) for name, field in D_METRICS.items()]
    found.append(("paced pacing rate", ("paced", "paced_rate")))
    return found


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(s: Mapping[str, float] | None, *, spread: bool) -> str:
    if s is None:
        return ""
    if not spread or s["rounds"] < 2:
        return _fmt(s["median"])
    return f"{_fmt(s['median'])} [{_fmt(s['min'])}-{_fmt(s['max'])}]"


def measurements(summary: Mapping[str, Mapping[str, float]]) -> str:
    """One row per run: median [min-max] of its rate and CPU cost, medians of the rest."""
    rows: dict[str, None] = {}
    for name in summary:
        for metric in FIELDS:
            if name.endswith(" " + metric):
                rows[name[: -len(metric) - 1]] = None
    header = ["run", "rate /s", "CPU-µs/order", "peak RSS MB", "start-up s", "service cores",
              "decodes/order"]  # fmt: skip
    table = [header]
    for row in rows:
        rate = summary.get(f"{row} orders/s") or summary.get(f"{row} records/s")
        table.append([
            row, _cell(rate, spread=True),
            _cell(summary.get(f"{row} CPU-µs/order"), spread=True),
            _cell(summary.get(f"{row} peak RSS MB"), spread=False),
            _cell(summary.get(f"{row} start-up s"), spread=False),
            _cell(summary.get(f"{row} busy cores"), spread=False),
            _cell(summary.get(f"{row} decodes/order"), spread=True),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    )


def ratio_table(ratios: Mapping[str, Mapping[str, float]]) -> str:
    width = max((len(name) for name in ratios), default=10) + 2
    lines = [f"{'ratio':{width}}{'median':>8}{'min':>8}{'max':>8}  target"]
    for name, s in ratios.items():
        note = ""
        if name in TARGETS:
            verdict = "ok" if s["median"] <= TARGETS[name] else "OVER"
            note = f"<= {TARGETS[name]:g} ({verdict})"
        lines.append(f"{name:{width}}{_fmt(s['median']):>8}{_fmt(s['min']):>8}"
                     f"{_fmt(s['max']):>8}  {note}")  # fmt: skip
    return "\n".join(lines)


def render(results: Mapping[str, Any]) -> str:
    """The text `make bench` prints at the end."""
    s, sink, summary = results["settings"], results["sink"], results["summary"]
    lat = results["options"]["latency_ms"]
    trees = ", ".join(f"{t['label']}={t['commit']}" for t in results["trees"])
    machine = results["machine"]
    lines = [
        "",
        f"order-consumer benchmark · {trees} · {machine['cpus']} cores, load"
        f" {machine['load_before'][0]:.1f} at start · {results['duration_s'] / 60:.1f} min",
        "",
        f"Measurements over {len(results['rounds'])} rounds: median [min-max]",
        measurements(summary),
    ]
    paced = [summary.get(f"paced {q} ms") for q in ("p50", "p95", "p99")]
    if all(paced):
        target = summary.get("paced pacing rate") or summary["paced orders/s"]
        rate = target["median"]
        lines.append(
            f"Latency at 50% of D{lat:g} sqlite x1 ({rate:,.0f} orders/s), record timestamp ->"
            " 2xx, ms: " + ", ".join(f"{q} {_cell(p, spread=True)}"
                                     for q, p in zip(("p50", "p95", "p99"), paced, strict=True))
        )  # fmt: skip
        warm_up = summary.get("paced warm_up_p99 ms")
        warm_up_s = next((w for rnd in results["rounds"]
                          if (w := _get(rnd, "paced", "latency_ms", "warm_up_s")) is not None),
                         None)  # fmt: skip
        if warm_up is not None and warm_up_s is not None:
            lines.append(f"  (the first {warm_up_s:g} s of pacing are left out of these: their p99"
                         f" {_cell(warm_up, spread=True)})")  # fmt: skip
    smallest = s["smallest_batch"]
    lines += [
        "",
        "Ratios, computed within each round",
        ratio_table(results["ratios"]),
        "",
        f"D{lat:g} bound = min(concurrency {s['concurrency']} x batch {s['batches'][smallest]}"
        f" ({smallest}, the smallest) / {lat:g} ms, B). p99 target = linger {s['linger_ms']}"
        f" + 3 x {lat:g} + 50 = {s['linger_ms'] + 3 * lat + 50:g} ms.",
        (
            f"Rates vary ±{results['variation_pct']:.0f}% between rounds (the largest half-range"
            " of the D rates): read smaller differences as noise."
            if len(results["rounds"]) > 1
            else "One round: no spread measured; run more rounds before trusting a difference."
        ),
        f"Sink: {sink['requests_per_s']:,.0f} requests/s under load, latency 0"
        f" ({sink['orders_per_s']:,.0f} orders/s in batches of 50); the busiest second of any D"
        f" run needed {sink['needed_requests_per_s']:,.0f}: "
        + ("ok" if sink["headroom_ok"] else "NOT ENOUGH HEADROOM, the sink may limit D")
        + f"; it used at most {sink['max_cpu_share']:.0%} of a core in a D run.",
    ]  # fmt: skip
    for key, what in (("in_flight", "MAX_IN_FLIGHT"), ("latency", "vendor latency ms")):
        points = results["sweep"].get(key) or []
        if points:
            lines.append(f"Sweep ({what} -> orders/s): " + ", ".join(
                f"{p['value']:g} -> {p['orders_per_s']:,.0f}" for p in points))  # fmt: skip
    if results.get("broker") == "KAFKA_BOOTSTRAP_SERVERS":
        lines.append("Broker: the cluster at KAFKA_BOOTSTRAP_SERVERS, not the bench's own: its"
                     " settings, load and network are in these figures.")  # fmt: skip
    # The first line of each; the JSON keeps the log's tail.
    lines += [f"FAILED: {failure.splitlines()[0]}" for failure in results["failures"]]
    return "\n".join(lines)
