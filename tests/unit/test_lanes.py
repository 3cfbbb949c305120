"""Lanes, one per destination, over an in-memory topic: each destination settles and commits on
its own; poison, rejections and bugs are dead-lettered once; a failing destination never holds
back another, and a destination dead-lettering everything is braked instead."""

from __future__ import annotations

import asyncio
import time

from consumer.devenv.samples import sample_orders
from consumer.errors import TransientError
from consumer.ledger import ANY_PAYLOAD
from consumer.model import Invalid, Order, Payload, Skip
from tests.fakes import Deployment, MemoryDeadLetters, MemoryTopic, Vendor


def topic_with(count: int, *, seed: int = 1) -> tuple[MemoryTopic, list[dict]]:  # type: ignore[type-arg]
    topic = MemoryTopic(partitions=3)
    orders = sample_orders(count, seed=seed)
    topic.produce_orders(orders)
    return topic, orders


def test_each_destination_settles_and_commits_on_its_own(ledger) -> None:  # type: ignore[no-untyped-def]
    topic, _ = topic_with(5)
    plain = Vendor("a")
    skip_all = Vendor("b", rule=lambda order: Skip("no token"))
    invalid = Vendor("c", rule=lambda order: Invalid("nibble id without token"))
    deployment = Deployment(topic, [plain, skip_all, invalid], ledger)
    asyncio.run(deployment.run())
    outcomes = {lane.name: dict(lane.outcomes) for lane in deployment.lanes}
    assert outcomes == {"a": {"delivered": 5}, "b": {"skipped": 5}, "c": {"dead_lettered": 5}}
    assert len(plain.holds()) == 5
    assert {letter.destination for _, letter in deployment.sink.letters} == {"c"}
    assert deployment.sink.letters[0][1].error_class == "invalid_for_destination"
    for vendor in ("a", "b", "c"):
        assert deployment.committed(vendor) == {p: n for p, n in topic.end_offsets().items() if n}


def test_a_vendor_rejection_dead_letters_that_order_for_that_destination_only(ledger) -> None:  # type: ignore[no-untyped-def]
    topic, orders = topic_with(6)
    bad = orders[2]["order_number"]
    strict, lenient = Vendor("strict", reject={bad}), Vendor("lenient")
    deployment = Deployment(topic, [strict, lenient], ledger)
    asyncio.run(deployment.run())
    assert set(strict.holds()) == {o["order_number"] for o in orders} - {bad}
    assert set(lenient.holds()) == {o["order_number"] for o in orders}
    ((record, letter),) = deployment.sink.letters
    assert (letter.destination, letter.status, letter.order_number) == ("strict", 400, bad)
    headers = dict(letter.headers(record))
    assert headers["dlq.original.offset"] == str(record.offset).encode()
    assert headers["dlq.error.message"] == b"no"
    # A replay from the start repeats no dead letter and sends nothing.
    topic.committed.clear()
    requests = strict.requests, lenient.requests
    asyncio.run(Deployment(topic, [strict, lenient], ledger, sink=deployment.sink).run())
    assert len(deployment.sink.letters) == 1
    assert (strict.requests, lenient.requests) == requests


def test_an_undecodable_record_is_dead_lettered_once_for_all_destinations(ledger) -> None:  # type: ignore[no-untyped-def]
    topic = MemoryTopic(partitions=1)
    topic.append(0, b"k", b"\x01\x02")
    a, b = Vendor("a"), Vendor("b")
    deployment = Deployment(topic, [a, b], ledger)
    asyncio.run(deployment.run())
    assert (a.accepted, b.accepted) == ([], [])
    ((_, letter),) = deployment.sink.letters
    assert (letter.destination, letter.error_class) == ("*", "undecodable")
    assert deployment.committed("a") == deployment.committed("b") == {0: 1}

    async def recorded() -> set[tuple[str, str]]:
        return await ledger.dead_lettered("*", [("orders/0@0", ANY_PAYLOAD)])

    assert asyncio.run(recorded()) == {("orders/0@0", ANY_PAYLOAD)}


def test_the_offset_waits_until_the_dead_letter_is_acknowledged(ledger) -> None:  # type: ignore[no-untyped-def]
    topic = MemoryTopic(partitions=1)
    topic.append(0, None, b"\x01")
    sink = MemoryDeadLetters(failures=30)
    deployment = Deployment(topic, [Vendor("a")], ledger, sink=sink)
    seen: list[tuple[int, dict[int, int]]] = []

    def written() -> bool:
        seen.append((len(sink.letters), dict(deployment.committed("a"))))
        return deployment.committed("a") == {0: 1}

    asyncio.run(deployment.run(until=written))
    assert all(committed == {} for letters, committed in seen if letters == 0)
    assert len(sink.letters) == 1


def test_a_bug_on_the_dead_letter_path_delays_the_record_but_never_drops_it(ledger) -> None:  # type: ignore[no-untyped-def]
    topic = MemoryTopic(partitions=1)
    topic.append(0, None, b"\x01")
    sink = MemoryDeadLetters(bugs=2)
    deployment = Deployment(topic, [Vendor("a")], ledger, sink=sink)
    asyncio.run(deployment.run(until=lambda: deployment.committed("a") == {0: 1}))
    assert len(sink.letters) == 1
    assert deployment.lanes[0].snapshot()["internal_errors"] == 2


def test_one_destination_down_never_holds_back_the_others(ledger) -> None:  # type: ignore[no-untyped-def]
    """The window is 20 records; 300 are produced: the healthy vendors get all of them."""
    topic, orders = topic_with(300)
    down, healthy = Vendor("down"), Vendor("healthy")
    down.answer = lambda numbers: TransientError("HTTP 503", status=503)
    deployment = Deployment(topic, [down, healthy], ledger, max_in_flight=20)
    everything = {o["order_number"] for o in orders}
    asyncio.run(deployment.run(until=lambda: set(healthy.holds()) == everything))
    assert down.accepted == []
    assert sum(deployment.committed("healthy").values()) == 300
    assert sum(deployment.committed("down").values()) == 0
    # The vendor comes back: it catches up, nothing lost, nothing twice.
    down.answer = lambda numbers: None
    asyncio.run(deployment.run())
    assert set(down.holds()) == everything
    assert len(down.accepted) == 300
    assert len(healthy.accepted) == 300


class HeldUpLedger:
    """A ledger whose writes hold the event loop for a while, as a commit on a busy disk does."""

    def __init__(self, ledger, hold_s: float) -> None:  # type: ignore[no-untyped-def]
        self._ledger = ledger
        self._hold_s = hold_s

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._ledger, name)

    async def mark_delivered(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        time.sleep(self._hold_s)  # blocks the loop on purpose
        await self._ledger.mark_delivered(*args, **kwargs)


def test_a_loop_held_up_by_a_ledger_write_is_not_taken_for_caught_up(ledger) -> None:  # type: ignore[no-untyped-def]
    """Between a window settling and the next fetch, a lane with a backlog is not idle, however
    long the last write held the loop (the deployment stops at 0.1 s idle)."""
    topic, orders = topic_with(100)
    vendor = Vendor("crm")
    deployment = Deployment(topic, [vendor], HeldUpLedger(ledger, 0.15), max_in_flight=10)
    asyncio.run(deployment.run(idle_s=0.1))
    assert set(vendor.holds()) == {o["order_number"] for o in orders}


def test_a_later_cancellation_in_a_backlog_ends_at_the_vendor(ledger) -> None:  # type: ignore[no-untyped-def]
    topic = MemoryTopic(partitions=3)
    orders = sample_orders(40, seed=3)
    cancelled = [dict(o, state="CANCELLED") for o in orders[::4]]
    topic.produce_orders(orders + cancelled)
    crm = Vendor("crm", resend_changed=True)
    social = Vendor("social", rule=lambda order: (
        Skip("not a sale") if order.state == "CANCELLED"
        else Payload(items=({"n": order.order_number, "state": order.state},))
    ))  # fmt: skip
    asyncio.run(Deployment(topic, [crm, social], ledger).run())
    expected = {o["order_number"]: o["state"] for o in orders + cancelled}
    assert {n: p["state"] for n, p in crm.holds().items()} == expected
    # Once each, never the cancellation (no update there: the first sale stands).
    sold = {o["order_number"] for o in orders if o["state"] != "CANCELLED"}
    assert sorted(n for n, _ in social.accepted) == sorted(sold)


def test_a_bug_while_handling_a_record_is_retried_then_dead_lettered(ledger) -> None:  # type: ignore[no-untyped-def]
    topic, orders = topic_with(6)
    cursed = orders[1]["order_number"]

    def rule(order: Order) -> Payload:
        if order.order_number == cursed:
            raise ZeroDivisionError("a bug")
        return Payload(items=({"n": order.order_number},))

    vendor = Vendor("a", rule=rule)
    deployment = Deployment(topic, [vendor], ledger)
    asyncio.run(deployment.run())
    assert set(vendor.holds()) == {o["order_number"] for o in orders} - {cursed}
    ((_, letter),) = deployment.sink.letters
    assert (letter.error_class, letter.order_number) == ("internal_error", cursed)
    assert "ZeroDivisionError" in letter.message
    assert sum(deployment.committed("a").values()) == 6
    assert deployment.lanes[0].snapshot()["internal_errors"] >= 1


def test_the_dead_letter_brake_pauses_a_destination_that_rejects_everything(ledger) -> None:  # type: ignore[no-untyped-def]
    topic, orders = topic_with(200)
    everyone = {o["order_number"] for o in orders}
    broken, fine = Vendor("broken", reject=set(everyone)), Vendor("fine")
    deployment = Deployment(topic, [broken, fine], ledger, brake=(0.5, 50, 10))
    seen: dict[str, object] = {}
    states: set[str] = set()

    def braked_then_fixed() -> bool:
        lane = deployment.lanes[0].snapshot()
        if "written" not in seen:
            if lane["brake"]["tripped"]:
                states.add(lane["state"])  # paused, but for the moments a probe is let through
            # The tenth dead letter trips the brake: nine are written, the rest wait.
            written = len(deployment.sink.letters)
            if len(fine.holds()) == 200 and lane["brake"]["held"] > 0 and written == 9:
                seen.update(snapshot=lane, written=len(deployment.sink.letters),
                            committed=sum(deployment.committed("broken").values()))  # fmt: skip
                broken.reject.clear()  # the vendor is fixed: a probe passes, the brake releases
            return False
        return sum(deployment.committed("broken").values()) == 200

    asyncio.run(deployment.run(until=braked_then_fixed))
    snapshot = seen["snapshot"]
    assert snapshot["brake"]["tripped"] and "paused" in states  # type: ignore[index]
    assert seen["written"] == 9  # the tenth dead letter trips the brake and waits with the rest
    assert seen["committed"] < 200  # type: ignore[operator]  # offsets held meanwhile
    dead = {letter.order_number for _, letter in deployment.sink.letters}
    assert len(deployment.sink.letters) == seen["written"]  # nothing more dead-lettered
    assert set(broken.holds()) == everyone - dead
    assert not deployment.lanes[0].snapshot()["brake"]["tripped"]


def test_a_partition_held_by_one_record_shows_as_stalled(ledger) -> None:  # type: ignore[no-untyped-def]
    topic, _ = topic_with(10)
    stuck = Vendor("stuck")
    stuck.answer = lambda numbers: TransientError("HTTP 503", status=503)
    deployment = Deployment(topic, [stuck], ledger)
    snapshots: list[dict] = []  # type: ignore[type-arg]

    def observed() -> bool:
        snapshots.append(deployment.lanes[0].snapshot())
        return bool(snapshots[-1]["stalled_partitions"])

    asyncio.run(deployment.run(until=observed))
    assert snapshots[-1]["oldest_record_s"] >= 0.2


def test_in_flight_is_bounded_by_bytes_as_well_as_records(ledger) -> None:  # type: ignore[no-untyped-def]
    topic, _ = topic_with(120)
    slow = Vendor("slow")
    slow.answer = lambda numbers: TransientError("HTTP 503", status=503)
    deployment = Deployment(topic, [slow], ledger, max_in_flight=10_000, max_in_flight_bytes=4096)
    peaks: list[int] = []

    def observed() -> bool:
        peaks.append(deployment.lanes[0].snapshot()["in_flight_bytes"])
        return len(peaks) > 50

    asyncio.run(deployment.run(until=observed))
    record_size = max(len(r.value or b"") + len(r.key or b"") for p in topic.partitions.values()
                      for r in p)  # fmt: skip
    # Fetching pauses at the bound; one poll may overshoot it by at most one batch of records.
    assert 0 < max(peaks) <= 4096 + 3 * record_size
    assert sum(deployment.committed("slow").values()) == 0


def test_a_topic_that_mostly_does_not_decode_trips_the_brake_instead_of_emptying_itself(
    ledger,  # type: ignore[no-untyped-def]
) -> None:
    """A wrong writer schema (a settings problem) would dead-letter the whole topic: the brake
    stops it after a few, and the offsets stay where they are."""
    topic = MemoryTopic(partitions=1)
    for n in range(60):
        topic.append(0, f"k{n}".encode(), b"\x02\x01not what the schema says")
    deployment = Deployment(topic, [Vendor("a")], ledger, brake=(0.5, 50, 10))
    asyncio.run(deployment.run(until=lambda: deployment.lanes[0].snapshot()["brake"]["held"] > 0
                               and len(deployment.sink.letters) == 9))  # fmt: skip
    assert deployment.lanes[0].snapshot()["brake"]["tripped"]
    assert deployment.committed("a").get(0, 0) <= 9


def test_lag_counts_the_records_in_flight_not_only_those_still_unfetched(ledger) -> None:  # type: ignore[no-untyped-def]
    topic, _ = topic_with(60)
    down = Vendor("down")
    down.answer = lambda numbers: TransientError("HTTP 503", status=503)
    deployment = Deployment(topic, [down], ledger)
    lags: list[int] = []

    def observed() -> bool:
        snapshot = deployment.lanes[0].snapshot()
        lags.append(sum(snapshot["lag"].values()))
        return snapshot["in_flight"] == 60

    asyncio.run(deployment.run(until=observed))
    assert lags[-1] == 60  # all fetched, none delivered: 60 behind, not 0
