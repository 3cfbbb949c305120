"""The committed offset never passes an unfinished record."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.offsets import PartitionProgress


def test_out_of_order_completion_commits_only_the_contiguous_prefix() -> None:
    progress = PartitionProgress()
    for offset in (10, 11, 12, 13):
        progress.start(offset)
    progress.finish(12)
    progress.finish(13)
    assert progress.committable is None  # 10 still in flight: nothing may be committed
    progress.finish(10)
    assert progress.committable == 11  # 11 is held back, so 12 and 13 wait behind it
    progress.finish(11)
    assert progress.committable == 14
    assert progress.in_flight == 0


def test_unstored_reports_a_position_once() -> None:
    progress = PartitionProgress()
    progress.start(0)
    progress.finish(0)
    assert progress.unstored() == 1
    progress.stored = 1
    assert progress.unstored() is None


@given(st.permutations(list(range(40))), st.integers(min_value=0, max_value=39))
def test_committable_is_always_below_the_first_unfinished_offset(
    order: list[int], held: int
) -> None:
    progress = PartitionProgress()
    for offset in range(40):
        progress.start(offset)
    for offset in order:
        if offset != held:
            progress.finish(offset)
            assert (progress.committable or 0) <= held
    progress.finish(held)
    assert progress.committable == 40
