"""What the bench reads while a run goes on, without asking the service anything: CPU time and
peak RSS from /proc, the machine's busy time, committed offsets of candidate groups, and the
service's own JSON log lines (when it got its partitions)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_and_rss(pid: int) -> tuple[float, float]:
    """(utime + stime in seconds, VmHWM in MiB) of a live process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) / 1024
    return cpu, rss


def machine_busy() -> float:
    """CPU seconds spent by the whole machine so far (all cores, not idle, not iowait)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


class Series:
    """A monotonic figure sampled over time (CPU seconds); read back at any moment."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    def add(self, moment: float, value: float) -> None:
        self.samples.append((moment, value))

    def at(self, moment: float) -> float:
        """Linear interpolation between the samples around `moment`."""
        before = [s for s in self.samples if s[0] <= moment]
        after = [s for s in self.samples if s[0] >= moment]
        if not before:
            return self.samples[0][1]
        if not after:
            return self.samples[-1][1]
        (t1, v1), (t2, v2) = before[-1], after[0]
        return v1 if t2 == t1 else v1 + (v2 - v1) * (moment - t1) / (t2 - t1)

    def between(self, start: float, end: float) -> float:
        return self.at(end) - self.at(start) if self.samples else 0.0


class Offsets:
    """Committed offsets of the candidate groups, through one long-lived client per group."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, groups: Sequence[str]) -> None:
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._clients = {g: Consumer({"bootstrap.servers": bootstrap, "group.id": g,
                                      "enable.auto.commit": False}) for g in groups}  # fmt: skip

    def committed(self, group: str) -> dict[int, int]:
        """The group's committed offset per partition (0 where it committed nothing)."""
        committed = self._clients[group].committed(self._tps, timeout=10)
        return {tp.partition: max(tp.offset, 0) for tp in committed}

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def first_assigned(logs: Sequence[Path]) -> float | None:
    """Wall-clock time of the first `consumer.assigned` event in the processes' JSON logs."""
    moments = _events(logs, ("consumer.assigned",))
    return min(moments, default=None)


def records_decoded(logs: Sequence[Path]) -> int | None:
    """Records the processes decoded, from their `consumer.summary` lines (None: a version
    that does not say, or a process that did not get to say)."""
    counts = []
    for path in logs:
        said = [e.get("records_decoded") for e in _logged(path, ("consumer.summary",))]
        counts.append(said[-1] if said else None)
    if not counts or any(not isinstance(c, int) for c in counts):
        return None
    return sum(c for c in counts if isinstance(c, int))


def last_rebalance(logs: Sequence[Path], *, before: float) -> float | None:
    """Wall-clock time of the last partition assignment or revocation before `before` in the
    processes' JSON logs: from then on the group was settled."""
    moments = _events(logs, ("consumer.assigned", "consumer.revoked"))
    return max((m for m in moments if m < before), default=None)


def _events(logs: Sequence[Path], names: Sequence[str]) -> list[float]:
    moments = []
    for path in logs:
        for event in _logged(path, names):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                moments.append(datetime.fromisoformat(event["timestamp"]).timestamp())
    return moments


def _logged(path: Path, names: Sequence[str]) -> list[dict[str, Any]]:
    """The JSON log lines of one process that record one of the named events."""
    wanted = tuple(f'"{name}"' for name in names)
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if any(name in line for name in wanted):
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    found.append(event)
    return found


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
