"""Fault-injection scenarios: real broker, real consumer processes, the vendor sandbox, and a
shared PostgreSQL ledger where several consumers run. Each scenario ends with `measure(...)`,
which asserts nothing was lost and records the scenario's figures line:

    produced N · delivered N per destination · duplicates D · lost 0 · dead-lettered K (expected K)

`CHAOS_SCALE` multiplies the order counts (`make chaos` runs with a larger scale)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from consumer.devenv.postgres import create_schema, drop_schema
from consumer.sandbox.control import SandboxControl
from tests.integration.conftest import Stage
from tests.integration.expectations import expected_keys

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
VENDORS = ("nibble", "nudgify", "custobar")
SCALE = max(1, int(os.environ.get("CHAOS_SCALE", "1")))
FIGURES: list[str] = []


def scaled(count: int) -> int:
    return count * SCALE


@dataclass(frozen=True)
class Figures:
    produced: int
    delivered: dict[str, int]
    expected: dict[str, int]
    duplicates: dict[str, int]
    lost: dict[str, int]
    dead_lettered: int
    expected_dead_lettered: int

    def line(self) -> str:
        delivered = ", ".join(f"{v} {self.delivered[v]}/{self.expected[v]}" for v in VENDORS)
        return (
            f"produced {self.produced} · delivered {delivered} · "
            f"duplicates {sum(self.duplicates.values())} · lost {sum(self.lost.values())} · "
            f"dead-lettered {self.dead_lettered} (expected {self.expected_dead_lettered})"
        )


def measure(
    scenario: str,
    stage: Stage,
    sandbox: SandboxControl,
    orders: Sequence[dict[str, Any]],
    *,
    produced: int | None = None,
    expected_dead_lettered: int = 0,
    allowed_duplicates: int = 0,
    refused: dict[str, set[str]] | None = None,
) -> Figures:
    """Figures from the sandbox's records and the dead-letter topic; asserts lost == 0, the
    dead-letter count and at most `allowed_duplicates` repeats. `refused`: per vendor, keys it
    dead-lettered by design (not expected to arrive)."""
    expected = expected_keys(orders)
    for vendor, keys in (refused or {}).items():
        expected[vendor] -= keys
    stats = sandbox.stats()
    delivered = {v: {r["key"] for r in sandbox.records(v)} for v in VENDORS}
    figures = Figures(
        produced=produced if produced is not None else len(orders),
        delivered={v: len(delivered[v] & expected[v]) for v in VENDORS},
        expected={v: len(expected[v]) for v in VENDORS},
        duplicates={v: int(stats[v]["duplicates"]) for v in VENDORS},
        lost={v: len(expected[v] - delivered[v]) for v in VENDORS},
        dead_lettered=len(stage.dead_letters(expected_dead_lettered, timeout_s=15)),
        expected_dead_lettered=expected_dead_lettered,
    )
    FIGURES.append(f"{scenario}: {figures.line()}")
    print(f"\n{scenario}: {figures.line()}")
    assert figures.lost == dict.fromkeys(VENDORS, 0), figures.line()
    assert all(delivered[v] <= expected[v] for v in VENDORS), "delivered an unexpected order"
    assert figures.dead_lettered == expected_dead_lettered, figures.line()
    assert sum(figures.duplicates.values()) <= allowed_duplicates, figures.line()
    return figures


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("chaos figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def shared_ledger_url(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema: the ledger several consumer processes share."""
    schema = f"chaos_{uuid.uuid4().hex[:10]}"
    yield create_schema(postgres_url, schema)
    drop_schema(postgres_url, schema)
