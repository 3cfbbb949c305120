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


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(title: str, summary: Mapping[str, Mapping[str, float]],
          units: Mapping[str, str] | None = None,
          targets: Mapping[str, float] | None = None) -> str:  # fmt: skip
    units, targets = units or {}, targets or {}
    width = max((len(name) for name in summary), default=10) + 2
    lines = [title, f"{'':{width}}{'median':>10}{'min':>10}{'max':>10}  unit / target"]
    for name, s in summary.items():
        note = units.get(name, "")
        if name in targets:
            verdict = "ok" if s["median"] <= targets[name] else "OVER"
            note = f"<= {targets[name]:g} ({verdict})"
        lines.append(f"{name:{width}}{_fmt(s['median']):>10}{_fmt(s['min']):>10}"
                     f"{_fmt(s['max']):>10}  {note}")  # fmt: skip
    return "\n".join(lines)
