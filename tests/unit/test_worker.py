"""Batching, per-order sequencing, retries, isolation of rejected orders and pauses, as a vendor
sees them: what it received, in which order, and what each record was told."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from consumer.deliver.destination import Outbound
from consumer.deliver.retry import Backoff
from consumer.deliver.worker import DestinationWorker, Outcome, payload_hash
from consumer.errors import (
    CredentialsError,
    FailedRequestError,
    RejectedError,
    TransientError,
)
from consumer.ledger import ClaimRequest, Ledger, State
from consumer.model import Order, Payload, TransformResult

FAST = Backoff(initial_s=0.001, maximum_s=0.01)


class FakeVendor:
    """A vendor stand-in: records every request; `behaviour` decides each answer."""

    name = "fake"

    def __init__(self, max_batch: int = 50, *, resend_changed: bool = False) -> None:
        self.max_batch = max_batch
        self.resend_changed = resend_changed
        self.requests: list[list[str]] = []
        self.accepted: list[tuple[str, str]] = []  # (order number, version), in arrival order
        self.behaviour: Callable[[list[str]], Exception | None] = lambda numbers: None

    def transform(self, order: Order) -> TransformResult:  # pragma: no cover - unused here
        raise NotImplementedError

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        numbers = [o.order_number for o in batch]
        self.requests.append(numbers)
        await asyncio.sleep(0)
        if (error := self.behaviour(numbers)) is not None:
            raise error
        self.accepted.extend((o.order_number, o.items[0]["version"]) for o in batch)

    def holds(self) -> dict[str, str]:
        """What an updating vendor holds at the end: the last version accepted per order."""
        return dict(self.accepted)

    async def aclose(self) -> None:
        pass


@dataclass(eq=False)
class RecordTicket:
    """A record as the worker sees it; remembers what it was told."""

    partition: int
    offset: int
    abandoned: bool = False
    topic: str = "orders"
    timestamp: int = -1
    outcomes: list[Outcome] = field(default_factory=list)
    errors: list[RejectedError | None] = field(default_factory=list)
    told: asyncio.Event = field(default_factory=asyncio.Event)

    def settle(self, outcome: Outcome, error: RejectedError | None = None) -> None:
        self.outcomes.append(outcome)
        self.errors.append(error)
        self.told.set()

    @property
    def outcome(self) -> Outcome:
        assert len(self.outcomes) == 1, f"told {self.outcomes}"
        return self.outcomes[0]


def worker(vendor: FakeVendor, ledger: Ledger, **overrides: object) -> DestinationWorker:
    options: dict[str, object] = dict(
        owner="test", secret=b"s" * 16, linger_s=0.01, concurrency=4, backoff=FAST,
        credentials_retry_s=0.01, lease_s=60,
    )  # fmt: skip
    options.update(overrides)
    return DestinationWorker(vendor, ledger, **options)  # type: ignore[arg-type]


def payload(number: str, version: str = "v1") -> Payload:
    return Payload(items=({"order_number": number, "version": version},))


class Stream:
    """Records submitted in topic order (offsets count up per call)."""

    def __init__(self, w: DestinationWorker) -> None:
        self.w = w
        self.tickets: list[RecordTicket] = []

    def submit(self, number: str, version: str = "v1", *, partition: int = 0) -> RecordTicket:
        ticket = RecordTicket(partition, len(self.tickets))
        self.w.submit(Outbound.of(number, payload(number, version)), ticket)
        self.tickets.append(ticket)
        return ticket

    async def settled(self, timeout_s: float = 10) -> list[Outcome]:
        await asyncio.wait_for(asyncio.gather(*(t.told.wait() for t in self.tickets)), timeout_s)
        return [t.outcome for t in self.tickets]


async def deliver_all(w: DestinationWorker, numbers: Sequence[str]) -> list[Outcome]:
    w.start()
    stream = Stream(w)
    try:
        for number in numbers:
            stream.submit(number)
        return await stream.settled()
    finally:
        await w.aclose()


def test_orders_from_many_records_share_requests_of_at_most_the_batch_size(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor(max_batch=50)
    numbers = [f"O{i}" for i in range(120)]
    outcomes = asyncio.run(deliver_all(worker(vendor, ledger), numbers))
    assert outcomes == [Outcome.DELIVERED] * 120
    assert sorted((len(r) for r in vendor.requests), reverse=True) == [50, 50, 20]
    assert sorted(n for n, _ in vendor.accepted) == sorted(numbers)


def test_orders_arriving_while_a_batch_goes_out_fill_the_next_request_instead_of_a_small_one(
    ledger,  # type: ignore[no-untyped-def]
) -> None:
    """A steady stream is sent in full requests: what is left behind a full batch waits for
    the linger to fill up, and is sent once its oldest order has waited that long."""
    vendor = FakeVendor(max_batch=50)

    async def scenario() -> tuple[list[Outcome], float]:
        w = worker(vendor, ledger, linger_s=0.2)
        w.start()
        stream = Stream(w)
        try:
            for i in range(60):  # a full batch and 10 more
                stream.submit(f"A{i}")
            await asyncio.sleep(0.05)
            for i in range(40):  # arrive while those 10 wait
                stream.submit(f"B{i}")
            await asyncio.sleep(0.05)
            stream.submit("C0")  # alone: goes once it has waited the linger
            started = asyncio.get_running_loop().time()
            outcomes = await stream.settled()
            return outcomes, asyncio.get_running_loop().time() - started
        finally:
            await w.aclose()

    outcomes, waited = asyncio.run(scenario())
    assert outcomes == [Outcome.DELIVERED] * 101
    assert [len(r) for r in vendor.requests] == [50, 50, 1]
    assert vendor.requests[1] == [f"A{i}" for i in range(50, 60)] + [f"B{i}" for i in range(40)]
    assert waited < 1.0  # the lone order was not held back beyond its linger


def test_a_batch_that_fills_up_goes_at_once_without_waiting_out_the_linger(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor(max_batch=50)

    async def scenario() -> tuple[float, list[Outcome]]:
        w = worker(vendor, ledger, linger_s=2.0)
        w.start()
        stream = Stream(w)
        try:
            stream.submit("lone")  # starts a 2 s linger
            await asyncio.sleep(0.1)
            started = asyncio.get_running_loop().time()
            for i in range(100):  # two full batches' worth with the lone order, and one more
                stream.submit(f"F{i}")
            full = stream.tickets[:100]
            await asyncio.wait_for(asyncio.gather(*(t.told.wait() for t in full)), 10)
            filled_after = asyncio.get_running_loop().time() - started
            return filled_after, await stream.settled()
        finally:
            await w.aclose()

    filled_after, outcomes = asyncio.run(scenario())
    assert filled_after < 1.0  # not the 1.9 s left of the lone order's linger
    assert outcomes == [Outcome.DELIVERED] * 101
    assert [len(r) for r in vendor.requests] == [50, 50, 1]


def test_a_paused_vendor_is_probed_again_after_the_probing_orders_went_elsewhere(ledger) -> None:  # type: ignore[no-untyped-def]
    """The batch that met a refusal holds the pause; if its orders settle without the
    vendor's answer (their partition was revoked), a later batch probes, so orders for a
    vendor that accepts again are delivered instead of waiting for good."""
    vendor = FakeVendor()
    refusing = {"P"}
    vendor.behaviour = lambda numbers: (
        CredentialsError("API key refused", status=401) if refusing & set(numbers) else None
    )

    async def scenario() -> tuple[Stream, bool]:
        w = worker(vendor, ledger, credentials_retry_s=0.3)
        w.start()
        stream = Stream(w)
        try:
            probe = stream.submit("P")
            await asyncio.sleep(0.1)  # refused: the destination is paused, P is the probe
            assert w.paused
            probe.abandoned = True  # P's partition is revoked during the pause
            later = stream.submit("Q")  # the vendor takes Q
            await asyncio.wait_for(later.told.wait(), 5)
            return stream, w.paused
        finally:
            await w.aclose()

    stream, paused = asyncio.run(scenario())
    assert stream.tickets[1].outcome is Outcome.DELIVERED
    assert not paused
    assert [n for n, _ in vendor.accepted] == ["Q"]


def test_a_batch_leaving_after_its_verdict_never_lifts_another_batchs_refusal(ledger) -> None:  # type: ignore[no-untyped-def]
    """X is refused, then judged (A rejected, B retried after a 503); meanwhile Y is refused
    and holds the pause. B's partition is revoked, so X leaves: the orders waiting behind Y's
    pause stay waiting, and only Y goes on asking the vendor."""
    vendor = FakeVendor(max_batch=2)
    tries = {"X": 0}

    def answer(numbers: list[str]) -> Exception | None:
        if numbers == ["A", "B"]:
            tries["X"] += 1
            if tries["X"] == 1:
                return CredentialsError("API key refused", status=401)
            return RejectedError("bad", status=422, culprits={0: "A is invalid"})
        if numbers == ["B"]:
            return TransientError("unavailable", status=503, retry_after=0.5)
        return CredentialsError("API key refused", status=401)

    vendor.behaviour = answer

    async def scenario() -> list[list[str]]:
        w = worker(vendor, ledger, credentials_retry_s=0.3, linger_s=0.01)
        w.start()
        stream = Stream(w)
        try:
            stream.submit("A")
            b = stream.submit("B")
            await asyncio.sleep(0.4)  # X refused, retried, judged; B waits out its 503
            stream.submit("Y1")
            stream.submit("Y2")
            await asyncio.sleep(0.05)  # Y refused: the destination is paused
            for i in range(6):
                stream.submit(f"W{i}")
            await asyncio.sleep(0.05)
            sent_before = len(vendor.requests)
            b.abandoned = True  # X leaves with nothing left to send
            await asyncio.sleep(0.5)
            assert w.paused
            return vendor.requests[sent_before:]
        finally:
            await w.aclose()

    after_x_left = asyncio.run(scenario())
    assert after_x_left and all(r == ["Y1", "Y2"] for r in after_x_left)


def test_transient_failures_are_retried_until_delivered_once(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()
    failures = iter([TransientError("HTTP 503", status=503), TransientError("timeout")])
    vendor.behaviour = lambda numbers: next(failures, None)
    outcomes = asyncio.run(deliver_all(worker(vendor, ledger), ["A", "B"]))
    assert outcomes == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert len(vendor.requests) == 3
    assert [n for n, _ in vendor.accepted] == ["A", "B"]


def test_retry_after_is_honoured(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()
    failures = iter([TransientError("HTTP 429", status=429, retry_after=0.3)])
    vendor.behaviour = lambda numbers: next(failures, None)
    loop_time: list[float] = []

    async def scenario() -> None:
        loop_time.append(asyncio.get_running_loop().time())
        await deliver_all(worker(vendor, ledger), ["A"])
        loop_time.append(asyncio.get_running_loop().time())

    asyncio.run(scenario())
    assert loop_time[1] - loop_time[0] >= 0.3


def test_a_rejection_naming_nobody_is_bisected_to_the_one_bad_order(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor(max_batch=50)
    vendor.behaviour = lambda numbers: (
        RejectedError("bad", status=400) if "O17" in numbers else None
    )
    numbers = [f"O{i}" for i in range(50)]
    outcomes = asyncio.run(deliver_all(worker(vendor, ledger), numbers))
    assert outcomes.count(Outcome.REJECTED) == 1
    assert outcomes[17] is Outcome.REJECTED
    accepted = [n for n, _ in vendor.accepted]
    assert sorted(accepted) == sorted(n for n in numbers if n != "O17")
    assert len(accepted) == len(set(accepted))  # every good order exactly once
    # One culprit among 50 costs two requests per halving, not one request per order.
    assert len(vendor.requests) <= 1 + 2 * 6


def test_a_rejection_naming_its_culprits_removes_exactly_those(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor(max_batch=10)

    def answer(numbers: list[str]) -> Exception | None:
        bad = {i: "Email is required." for i, n in enumerate(numbers) if n in ("O3", "O8")}
        return RejectedError("Bad Request.", status=400, culprits=bad) if bad else None

    vendor.behaviour = answer
    numbers = [f"O{i}" for i in range(10)]
    outcomes = asyncio.run(deliver_all(worker(vendor, ledger), numbers))
    assert [n for n, o in zip(numbers, outcomes, strict=True) if o is Outcome.REJECTED] == [
        "O3", "O8"
    ]  # fmt: skip
    assert len(vendor.requests) == 2
    assert sorted(n for n, _ in vendor.accepted) == sorted(
        n for n in numbers if n not in ("O3", "O8")
    )


def test_a_conflict_is_retried_a_few_times_then_dead_lettered_as_a_conflict(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor(max_batch=10)
    vendor.behaviour = lambda numbers: (
        FailedRequestError("conflict", status=409, error_class="conflict")
        if "B" in numbers
        else None
    )
    w = worker(vendor, ledger, failed_request_attempts=3)

    async def scenario() -> Stream:
        w.start()
        stream = Stream(w)
        for number in ("A", "B", "C"):
            stream.submit(number)
        await stream.settled()
        await w.aclose()
        return stream

    stream = asyncio.run(scenario())
    assert [t.outcome for t in stream.tickets] == [
        Outcome.DELIVERED, Outcome.REJECTED, Outcome.DELIVERED
    ]  # fmt: skip
    error = stream.tickets[1].errors[0]
    assert error is not None and error.error_class == "conflict" and error.status == 409
    assert len(vendor.requests) <= 3 + 2 * 2  # bounded: three tries, then bisection
    assert sorted(n for n, _ in vendor.accepted) == ["A", "C"]


def test_wrong_credentials_pause_delivery_and_never_reject_orders(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()
    calls = {"n": 0}

    def answer(numbers: list[str]) -> Exception | None:
        calls["n"] += 1
        return CredentialsError("API Secret is not valid.", status=401) if calls["n"] <= 3 else None

    vendor.behaviour = answer
    w = worker(vendor, ledger)
    seen_states: list[str] = []

    async def scenario() -> list[Outcome]:
        w.start()
        stream = Stream(w)
        stream.submit("A")
        stream.submit("B")
        waiting = asyncio.ensure_future(stream.settled())
        while not waiting.done():
            seen_states.append(w.health.state)
            await asyncio.sleep(0.002)
        await w.aclose()
        return waiting.result()

    assert asyncio.run(scenario()) == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert "paused" in seen_states
    assert w.health.state == "ok"


def test_the_same_payload_in_flight_twice_is_sent_once(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()

    async def scenario() -> list[Outcome]:
        w = worker(vendor, ledger)
        w.start()
        stream = Stream(w)
        stream.submit("A")
        stream.submit("A")
        outcomes = await stream.settled()
        await w.aclose()
        return outcomes

    assert asyncio.run(scenario()) == [Outcome.DELIVERED, Outcome.DUPLICATE]
    assert vendor.accepted == [("A", "v1")]


def test_a_later_state_in_flight_is_sent_after_the_earlier_one_where_the_vendor_updates(
    ledger,
) -> None:  # type: ignore[no-untyped-def]
    """The finding: COMPLETE then CANCELLED in one backlog must end CANCELLED at Custobar."""
    vendor = FakeVendor(resend_changed=True)

    async def scenario() -> list[Outcome]:
        w = worker(vendor, ledger)
        w.start()
        stream = Stream(w)
        stream.submit("A", "complete")
        stream.submit("B", "complete")
        stream.submit("A", "cancelled")
        stream.submit("A", "complete")  # and back again
        stream.submit("A", "complete")  # an exact repeat of the last: shares its send
        outcomes = await stream.settled()
        await w.aclose()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes == [Outcome.DELIVERED, Outcome.DELIVERED, Outcome.DELIVERED,
                        Outcome.DELIVERED, Outcome.DUPLICATE]  # fmt: skip
    assert [v for n, v in vendor.accepted if n == "A"] == ["complete", "cancelled", "complete"]
    assert vendor.holds() == {"A": "complete", "B": "complete"}


def test_a_later_state_is_kept_out_where_the_vendor_takes_no_updates(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor(resend_changed=False)

    async def scenario() -> list[Outcome]:
        w = worker(vendor, ledger)
        w.start()
        stream = Stream(w)
        stream.submit("A", "complete")
        stream.submit("A", "amended")
        outcomes = await stream.settled()
        await w.aclose()
        return outcomes

    assert asyncio.run(scenario()) == [Outcome.DELIVERED, Outcome.KEPT]
    assert vendor.accepted == [("A", "complete")]


def test_a_replayed_older_event_never_rolls_the_vendor_back(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor(resend_changed=True)

    async def scenario() -> list[Outcome]:
        later = payload("A", "cancelled")
        request = ClaimRequest("A", payload_hash(later), 0, 7, "orders")
        await ledger.claim("fake", [request], owner="old", lease_s=60)
        await ledger.mark_delivered("fake", [request], owner="old")
        w = worker(vendor, ledger)
        w.start()
        stream = Stream(w)
        stream.submit("A", "complete")  # offset 0: older than the delivered offset 7
        outcomes = await stream.settled()
        await w.aclose()
        return outcomes

    assert asyncio.run(scenario()) == [Outcome.STALE]
    assert vendor.accepted == []


def test_orders_already_in_the_ledger_are_not_sent(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> list[Outcome]:
        digest = payload_hash(payload("A"))
        await ledger.claim("fake", [ClaimRequest("A", digest)], owner="old", lease_s=60)
        await ledger.mark_delivered("fake", [ClaimRequest("A", digest)], owner="old")
        return await deliver_all(worker(vendor, ledger), ["A", "B"])

    vendor = FakeVendor()
    assert asyncio.run(scenario()) == [Outcome.DUPLICATE, Outcome.DELIVERED]
    assert vendor.accepted == [("B", "v1")]


def test_resend_mode_sends_delivered_orders_again(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> list[Outcome]:
        digest = payload_hash(payload("A"))
        await ledger.claim("fake", [ClaimRequest("A", digest)], owner="old", lease_s=60)
        await ledger.mark_delivered("fake", [ClaimRequest("A", digest)], owner="old")
        return await deliver_all(worker(vendor, ledger, force=True), ["A"])

    vendor = FakeVendor()
    assert asyncio.run(scenario()) == [Outcome.DELIVERED]
    assert vendor.accepted == [("A", "v1")]


def test_records_of_a_revoked_partition_are_not_sent(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()

    async def scenario() -> list[Outcome]:
        w = worker(vendor, ledger)
        stream = Stream(w)
        gone = stream.submit("A")
        gone.abandoned = True
        stream.submit("B")
        w.start()
        outcomes = await stream.settled()
        await w.aclose()
        return outcomes

    assert asyncio.run(scenario()) == [Outcome.ABANDONED, Outcome.DELIVERED]
    assert vendor.accepted == [("B", "v1")]


class FlakyLedger:
    """The real ledger, but `claim` raises an unexpected error `failures` times."""

    def __init__(self, ledger: Ledger, failures: int) -> None:
        self._ledger = ledger
        self.failures = failures

    async def claim(self, *args: object, **kwargs: object) -> dict[str, State]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a bug in the claim path")
        return await self._ledger.claim(*args, **kwargs)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self._ledger, name)


def test_an_unexpected_error_is_retried_then_the_order_is_rejected_as_internal_error(
    ledger,
) -> None:  # type: ignore[no-untyped-def]
    async def scenario(failures: int) -> RecordTicket:
        w = worker(FakeVendor(), FlakyLedger(ledger, failures), internal_error_retries=2)  # type: ignore[arg-type]
        w.start()
        stream = Stream(w)
        ticket = stream.submit(f"A{failures}")
        await stream.settled()
        await w.aclose()
        return ticket

    assert asyncio.run(scenario(2)).outcome is Outcome.DELIVERED  # retried: recovered
    given_up = asyncio.run(scenario(10))
    assert given_up.outcome is Outcome.REJECTED
    assert given_up.errors[0] is not None and given_up.errors[0].error_class == "internal_error"


def test_a_clean_stop_gives_back_claims_that_no_request_carried(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()
    vendor.behaviour = lambda numbers: CredentialsError("Unauthenticated.", status=401)

    async def scenario() -> int:
        w = worker(vendor, ledger, credentials_retry_s=30)
        w.start()
        stream = Stream(w)
        for number in ("A", "B", "C"):
            stream.submit(number)
        while w.health.state != "paused":  # the vendor answered: nothing is in the air
            await asyncio.sleep(0.005)
        await w.aclose()
        return (await ledger.stats()).total().claimed

    assert asyncio.run(scenario()) == 0
