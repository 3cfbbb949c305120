"""Destinations progress independently: one vendor down, paused on credentials or 20x slower
never holds back the others, with far more orders produced than the in-flight window.

Each scenario prints its figures line plus the healthy destinations' delivery lag (seconds from
the consumer's start until a destination held every order it should)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from consumer.sandbox.control import SandboxControl
from tests.integration.chaos.conftest import FIGURES, VENDORS, measure, scaled
from tests.integration.chaos.test_faults import running
from tests.integration.conftest import Stage, wait_until
from tests.integration.expectations import expected_keys

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
WINDOW = 60  # CONSUMER_MAX_IN_FLIGHT per destination: produced is at least 5x this


def arrived(sandbox: SandboxControl, expected: dict[str, set[str]], vendor: str) -> bool:
    return expected[vendor] <= {r["key"] for r in sandbox.records(vendor)}


def lags_until_all_arrived(
    sandbox: SandboxControl, expected: dict[str, set[str]], vendors: list[str], started: float,
    timeout_s: float,
) -> dict[str, float]:  # fmt: skip
    lags: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(lags) < len(vendors) and time.monotonic() < deadline:
        for vendor in vendors:
            if vendor not in lags and arrived(sandbox, expected, vendor):
                lags[vendor] = round(time.monotonic() - started, 1)
        time.sleep(0.2)
    assert set(lags) == set(vendors), f"not every healthy vendor got everything: {lags}"
    return lags


def note(lags: dict[str, float]) -> None:
    """Add the delivery lags to the figures line `measure` just recorded."""
    extra = " · others' delivery lag " + ", ".join(f"{v} {s} s" for v, s in lags.items())
    FIGURES[-1] += extra
    print(extra)


@pytest.mark.parametrize(
    ("vendor", "faults", "what"),
    [
        ("custobar", {"down": True}, "down (503)"),
        ("nudgify", {"reject_auth": True}, "paused on credentials (401)"),
    ],
    ids=["down", "credentials"],
)
def test_one_vendor_out_for_a_long_stretch_while_the_others_deliver_everything(
    stage: Stage, sandbox: SandboxControl, vendor: str, faults: dict[str, Any], what: str
) -> None:
    sandbox.set_faults(vendor, **faults)
    orders = stage.produce_orders(scaled(6 * WINDOW), seed=31)
    expected = expected_keys(orders)
    others = [v for v in VENDORS if v != vendor]
    assert len(orders) >= 5 * WINDOW
    with running(stage, CONSUMER_MAX_IN_FLIGHT=str(WINDOW)) as process:
        started = time.monotonic()
        lags = lags_until_all_arrived(sandbox, expected, others, started, timeout_s=90)
        ends = stage.end_offsets()
        assert wait_until(lambda: all(stage.committed(v) == ends for v in others), timeout_s=30)
        assert sandbox.records(vendor) == []
        held = stage.committed(vendor)
        assert sum(max(o, 0) for o in held.values()) < sum(ends.values())  # offsets held back
        assert stage.dead_letters(0, timeout_s=1) == []
        assert process.poll() is None
        sandbox.clear_faults()  # the vendor is back: it catches up, nothing lost or doubled
        assert wait_until(lambda: stage.committed(vendor) == ends, timeout_s=90)
    measure(f"17. {vendor} {what}, {len(orders)} orders through a window of {WINDOW}",
            stage, sandbox, orders)  # fmt: skip
    note(lags)


def test_a_vendor_twenty_times_slower_than_the_others_holds_nobody_back(
    stage: Stage, sandbox: SandboxControl
) -> None:
    for vendor in ("nibble", "nudgify"):
        sandbox.set_faults(vendor, latency_ms=20)
    sandbox.set_faults("custobar", latency_ms=400)
    orders = stage.produce_orders(scaled(6 * WINDOW), seed=32)
    expected = expected_keys(orders)
    with running(stage, CONSUMER_MAX_IN_FLIGHT=str(WINDOW), CONSUMER_CONCURRENT_REQUESTS="1",
                 CONSUMER_CUSTOBAR_BATCH_SIZE="10"):  # fmt: skip
        started = time.monotonic()
        lags = lags_until_all_arrived(sandbox, expected, ["nibble", "nudgify"], started, 90)
        slow_done = len({r["key"] for r in sandbox.records("custobar")})
        assert slow_done < len(expected["custobar"]), "the slow vendor was not slower"
        custobar = lags_until_all_arrived(sandbox, expected, ["custobar"], started, 180)
        assert custobar["custobar"] > max(lags.values())
        ends = stage.end_offsets()
        assert wait_until(lambda: stage.committed() == ends, timeout_s=30)
    measure(f"18. custobar 20x slower (400 ms vs 20 ms), {len(orders)} orders",
            stage, sandbox, orders)  # fmt: skip
    note({**lags, **custobar})
