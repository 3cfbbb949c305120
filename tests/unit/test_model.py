"""The reference model on hand-written streams: what each vendor must hold, how often an order
may be sent, and which dead letters a stream makes (`tests/model.py` states the rules)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.devenv.samples import partition_for, sample_orders
from tests.model import Destinations, Expected, Record, expect, problems
from tests.streams import PARTITIONS, StreamSpec, build, consistent, story, stream_specs


def sendable_everywhere(index: int = 0) -> dict[str, Any]:
    """A COMPLETE order every vendor takes: an e-mail, a session token, a customer id."""
    (order,) = sample_orders(1, seed=11, prefix="UM", start=index)
    order = copy.deepcopy(order)
    order["state"] = "COMPLETE"
    order["customer"]["email"] = f"um{index}@example.com"
    order["nibble_session_token"] = f"sess-{index}"
    return order


def records(*orders: dict[str, Any]) -> list[Record]:
    return [
        Record(partition_for(o["order_number"].encode(), PARTITIONS), o["order_number"].encode(), o)
        for o in orders
    ]


def held_state(expected: Expected, vendor: str, number: str) -> Any:
    return expected.held[vendor][expected.keys[vendor][number]]


def test_complete_then_cancelled_custobar_ends_cancelled_and_the_others_keep_the_sale() -> None:
    complete, cancelled = story(sendable_everywhere(), ["cancel"])
    number = complete["order_number"]
    expected = expect(records(complete, cancelled))
    assert held_state(expected, "custobar", number)["transaction"]["sale_state"] == "CANCELLED"
    assert expected.sends["custobar"][number] == 2
    for vendor in ("nibble", "nudgify"):
        assert len(held_state(expected, vendor, number)) == 1
        assert expected.sends[vendor][expected.keys[vendor][number]] == 1
    assert not expected.dead_letters


def test_exact_repeats_send_nothing_more_anywhere() -> None:
    order = sendable_everywhere()
    expected = expect(records(order, order, copy.deepcopy(order)))
    number = order["order_number"]
    assert {v: expected.sends[v][expected.keys[v][number]] for v in expected.sends} == {
        "nibble": 1, "nudgify": 1, "custobar": 1,
    }  # fmt: skip


def test_cancel_then_complete_again_is_three_custobar_sends_ending_complete() -> None:
    events = story(sendable_everywhere(), ["cancel", "complete"])
    number = events[0]["order_number"]
    expected = expect(records(*events))
    assert expected.sends["custobar"][number] == 3
    assert held_state(expected, "custobar", number)["transaction"]["sale_state"] == "COMPLETE"
    assert expected.sends["nibble"][number] == 1


def test_a_change_then_its_revert_ends_holding_the_original_at_custobar() -> None:
    original, changed, reverted = story(sendable_everywhere(), ["amount", "revert"])
    assert reverted == original and changed != original
    number = original["order_number"]
    expected = expect(records(original, changed, reverted))
    alone = expect(records(original))
    assert expected.sends["custobar"][number] == 3
    assert held_state(expected, "custobar", number) == held_state(alone, "custobar", number)
    # Nibble keeps the first sale: no update endpoint, never two.
    assert held_state(expected, "nibble", number) == held_state(alone, "nibble", number)


def test_a_sale_first_seen_cancelled_reaches_nibble_with_its_later_completion() -> None:
    order = sendable_everywhere()
    cancelled, complete = story({**order, "state": "CANCELLED"}, ["complete"])
    expected = expect(records(cancelled, complete))
    assert expected.sends["nibble"][order["order_number"]] == 1
    assert expected.sends["custobar"][order["order_number"]] == 2


def test_unreadable_records_are_one_dead_letter_each_by_partition_and_offset() -> None:
    spec = StreamSpec(seed=1, stories=((),), schedule=(-1, 0, -2))
    stream = build(spec)
    expected = expect(stream)
    wanted = {("*", f"{r.partition}@{i}") for i, r in enumerate(stream) if r.order is None}
    assert len(stream) == 3
    assert set(expected.dead_letters) >= wanted
    assert sum(1 for destination, _ in expected.dead_letters if destination == "*") == 2


def test_an_invalid_event_is_a_dead_letter_for_its_destination_and_changes_nothing() -> None:
    complete, shipped, cancelled = story(sendable_everywhere(), ["bogus_state", "cancel"])
    number = complete["order_number"]
    expected = expect(records(complete, shipped, cancelled))
    assert expected.dead_letters == {("custobar", number): 1}
    assert expected.sends["custobar"][number] == 2  # COMPLETE, then CANCELLED
    assert held_state(expected, "custobar", number)["transaction"]["sale_state"] == "CANCELLED"


def test_an_order_a_vendor_rejects_is_dead_lettered_per_payload_it_would_send() -> None:
    complete, cancelled, again = story(sendable_everywhere(), ["cancel", "repeat"])
    number = complete["order_number"]
    rejecting = Destinations(reject={"custobar": frozenset({number})})
    expected = expect(records(complete, cancelled, again), rejecting)
    assert expected.dead_letters == {("custobar", number): 2}
    assert number not in expected.held["custobar"]
    assert expected.sends["nibble"][number] == 1


def test_one_order_on_two_partitions_is_refused_as_a_stream() -> None:
    order = sendable_everywhere()
    key = order["order_number"].encode()
    with pytest.raises(ValueError, match="two partitions"):
        expect([Record(0, key, order), Record(1, key, order)])


# The comparison -----------------------------------------------------------------------------
def observed(expected: Expected) -> dict[str, Any]:
    """What a service that followed the model exactly would leave behind."""
    return {
        "state": copy.deepcopy(expected.held),
        "sends": {v: dict(c) for v, c in expected.sends.items()},
        "dead_letters": list(expected.dead_letters.elements()),
    }


def test_a_swallowed_cancellation_is_named_as_the_problem() -> None:
    complete, cancelled = story(sendable_everywhere(), ["cancel"])
    number = complete["order_number"]
    expected = expect(records(complete, cancelled))
    seen = observed(expected)
    seen["state"]["custobar"] = expect(records(complete)).held["custobar"]
    seen["sends"]["custobar"][number] = 1
    assert problems(expected, **seen) == [
        f"custobar {number}: sale_state is 'COMPLETE', the last event says 'CANCELLED'"
    ]


def test_rows_an_earlier_payload_had_may_linger_but_invented_ones_may_not() -> None:
    order = sendable_everywhere()
    order["lines"] = order["lines"][:1] * 2
    before, after = story(consistent(order), ["drop_line"])
    number = order["order_number"]
    expected = expect(records(before, after))
    seen = observed(expected)
    lingering = expect(records(before)).held["custobar"][number]["rows"][f"{number}-2"]
    seen["state"]["custobar"][number]["rows"][f"{number}-2"] = lingering
    assert problems(expected, **seen) == []
    seen["state"]["custobar"][number]["rows"][f"{number}-3"] = {"quantity": 9}
    assert problems(expected, **seen) == [
        f"custobar {number}: row {number}-3 {{'quantity': 9}} was never in a payload"
    ]


def test_after_a_kill_an_order_in_flight_may_be_sent_once_more_within_the_window() -> None:
    order = sendable_everywhere()
    number = order["order_number"]
    expected = expect(records(order))
    seen = observed(expected)
    seen["state"]["nibble"][number] *= 2
    seen["sends"]["nibble"][number] = 2
    assert problems(expected, **seen) != []
    assert problems(expected, **seen, kills=1, window=20) == []
    assert problems(expected, **seen, kills=1, window=0) == [
        "nibble: 1 re-sends after 1 kills, the window is 0"
    ]


def test_a_missing_or_repeated_dead_letter_is_named() -> None:
    complete, shipped = story(sendable_everywhere(), ["bogus_state"])
    number = complete["order_number"]
    expected = expect(records(complete, shipped))
    seen = observed(expected)
    assert problems(expected, **{**seen, "dead_letters": []}) == [
        f"dead letter for custobar {number}: missing"
    ]
    twice = [("custobar", number)] * 2
    assert problems(expected, **{**seen, "dead_letters": twice}) == [
        f"dead letter for custobar {number}: 2x, at most 1"
    ]


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(spec=stream_specs(max_orders=5, max_later=4, max_poison=2), data=st.data())
def test_an_exact_repeat_inserted_anywhere_changes_nothing_a_vendor_holds_or_is_sent(
    spec: StreamSpec, data: st.DataObject
) -> None:
    stream = build(spec)
    at = data.draw(st.integers(0, len(stream) - 1))
    doubled = [*stream[: at + 1], stream[at], *stream[at + 1 :]]
    before, after = expect(stream), expect(doubled)
    assert after.held == before.held
    assert after.sends == before.sends


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(spec=stream_specs(max_orders=5, max_later=4, max_poison=2))
def test_nibble_and_nudgify_are_never_promised_two_of_one_order(
    spec: StreamSpec,
) -> None:
    stream = build(spec)
    expected = expect(stream)
    for vendor in ("nibble", "nudgify"):
        assert all(len(held) == 1 for held in expected.held[vendor].values())
        assert set(expected.sends[vendor].values()) <= {1}
