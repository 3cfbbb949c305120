"""13. A crash at each boundary of the flow, deterministically (`consumer.faultpoints`):
after the vendor's 2xx but before the ledger write, after the ledger write but before the
commit, after the dead-letter write but before the commit. Only the first may repeat sends."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from consumer.faultpoints import CRASH_EXIT_CODE
from consumer.sandbox.control import SandboxControl
from tests.integration.chaos.conftest import measure, scaled
from tests.integration.conftest import Stage

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
POISON = [(b"poison", b"\x07\x01\x02 not avro")]


# One request in flight at a time and one vendor: when the crash point fires, no other send is
# half-done, so any repeat after the restart would be the boundary's fault alone.
ONE_AT_A_TIME = {
    "CONSUMER_CONCURRENT_REQUESTS": "1",
    "CONSUMER_NUDGIFY_ENABLED": "false",
    "CONSUMER_CUSTOBAR_ENABLED": "false",
}


def crash_then_restart(stage: Stage, sandbox: SandboxControl, point: str, **overrides: str) -> None:
    started = time.monotonic()
    process = stage.spawn(ORDER_CONSUMER_CRASH_AT=point, **overrides)
    try:
        assert process.wait(timeout=90) == CRASH_EXIT_CODE, f"never reached {point}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    crashed = time.monotonic()
    sandbox.clear_faults()
    stage.run_in_process()
    print(f"crash after {crashed - started:.1f}s, restart took {time.monotonic() - crashed:.1f}s")
    assert stage.committed() == stage.end_offsets()


def test_a_crash_after_the_vendor_accepted_before_the_ledger_write_repeats_in_flight_orders_once(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(scaled(200))
    crash_then_restart(stage, sandbox, "after_vendor_accepted")
    # The one open window: what the vendors had accepted when the process died (every batch in
    # flight then) is sent once more; no order twice more, nothing lost. In flight per vendor
    # is at most CONCURRENT_REQUESTS batches.
    figures = measure("13a. crash after 2xx, before ledger", stage, sandbox, orders,
                      allowed_duplicates=3 * len(orders))  # fmt: skip
    settings = stage.settings()
    batch = {"nibble": settings.nibble.batch_size, "nudgify": settings.nudgify.batch_size,
             "custobar": settings.custobar.batch_size}  # fmt: skip
    for vendor in ("nibble", "nudgify", "custobar"):
        sent = Counter(record["key"] for record in sandbox.records(vendor))
        assert max(sent.values()) <= 2, vendor
        in_flight_bound = settings.delivery.concurrent_requests * batch[vendor]
        assert figures.duplicates[vendor] <= in_flight_bound, vendor


def test_a_crash_after_the_ledger_write_but_before_the_commit_repeats_nothing(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(scaled(200))
    crash_then_restart(stage, sandbox, "after_ledger_write", **ONE_AT_A_TIME)
    measure("13b. crash after ledger, before commit", stage, sandbox, orders)


def test_a_crash_after_the_dead_letter_write_but_before_the_commit_repeats_nothing(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(scaled(200), extra=POISON)
    sandbox.set_faults("nibble", down=True)  # no send can be half-done when the crash fires
    crash_then_restart(stage, sandbox, "after_dead_letter", **ONE_AT_A_TIME)
    measure("13c. crash after dead letter, before commit", stage, sandbox, orders,
            produced=len(orders) + 1, expected_dead_lettered=1)  # fmt: skip
