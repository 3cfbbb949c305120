"""One consumer group per destination, and the upgrade from the single group of earlier
versions: each new group starts where the old one had committed, so an upgrade neither replays
everything nor skips anything."""

from __future__ import annotations

import pytest

from consumer.decode import to_order
from consumer.sandbox.control import SandboxControl
from tests.integration.conftest import DESTINATIONS, Stage
from tests.integration.expectations import expected_keys

pytestmark = pytest.mark.integration


def test_an_upgrade_starts_every_destination_where_the_shared_group_stopped(
    stage: Stage, sandbox: SandboxControl
) -> None:
    before = stage.produce_orders(60, seed=41, prefix="OLD")
    old_ends = stage.end_offsets()
    stage.commit_group(stage.group, old_ends)  # what the previous version had committed
    after = stage.produce_orders(45, seed=42, prefix="NEW")
    stage.run_in_process()
    expected = expected_keys(after)
    for vendor in DESTINATIONS:
        held = {r["key"] for r in sandbox.records(vendor)}
        assert held == expected[vendor], vendor  # nothing replayed, nothing skipped
        assert stage.committed(vendor) == stage.end_offsets()
    assert not ({r["key"] for r in sandbox.records("custobar")}
                & {to_order(o).order_number for o in before})  # fmt: skip


def test_a_destination_group_that_has_offsets_is_left_where_it_is(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(30, seed=43)
    ends = stage.end_offsets()
    stage.commit_group(stage.group, dict.fromkeys(ends, 0))  # the old group: nothing consumed
    stage.commit_group(f"{stage.group}-nibble", ends)  # Nibble's group already ran to the end
    stage.run_in_process()
    assert sandbox.records("nibble") == []
    expected = expected_keys(orders)
    assert {r["key"] for r in sandbox.records("custobar")} == expected["custobar"]
