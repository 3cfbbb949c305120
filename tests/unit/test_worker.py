"""Batching, retries, isolation of rejected orders and credential pauses, as a vendor sees them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from consumer.deliver.destination import Outbound
from consumer.deliver.retry import Backoff
from consumer.deliver.worker import DestinationWorker, Outcome
from consumer.errors import CredentialsError, RejectedError, TransientError
from consumer.ledger import ClaimRequest, Ledger, State
from consumer.model import Order, Payload, TransformResult

FAST = Backoff(initial_s=0.001, maximum_s=0.01)


class FakeVendor:
    """A vendor stand-in: records every request; `behaviour` decides each answer."""

    name = "fake"
    resend_changed = False

    def __init__(self, max_batch: int = 50) -> None:
        self.max_batch = max_batch
        self.requests: list[list[str]] = []
        self.accepted: list[str] = []
        self.behaviour: Callable[[list[str]], Exception | None] = lambda numbers: None

    def transform(self, order: Order) -> TransformResult:  # pragma: no cover - unused here
        raise NotImplementedError

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        numbers = [o.order_number for o in batch]
        self.requests.append(numbers)
        await asyncio.sleep(0)
        if (error := self.behaviour(numbers)) is not None:
            raise error
        self.accepted.extend(numbers)

    async def aclose(self) -> None:
        pass


def worker(vendor: FakeVendor, ledger: Ledger, **overrides: object) -> DestinationWorker:
    options: dict[str, object] = dict(
        owner="test", secret=b"s" * 16, linger_s=0.01, concurrency=4, backoff=FAST,
        credentials_retry_s=0.01, lease_s=60,
    )  # fmt: skip
    options.update(overrides)
    return DestinationWorker(vendor, ledger, **options)  # type: ignore[arg-type]


def payload(number: str) -> Payload:
    return Payload(items=({"order_number": number},))


async def deliver_all(w: DestinationWorker, numbers: Sequence[str]) -> list[Outcome]:
    w.start()
    try:
        results = await asyncio.gather(*(w.submit(n, payload(n)) for n in numbers))
    finally:
        await w.aclose()
    return [r.outcome for r in results]


def test_orders_from_many_records_share_requests_of_at_most_the_batch_size(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor(max_batch=50)
    numbers = [f"O{i}" for i in range(120)]
    outcomes = asyncio.run(deliver_all(worker(vendor, ledger), numbers))
    assert outcomes == [Outcome.DELIVERED] * 120
    assert [len(r) for r in vendor.requests] == [50, 50, 20]
    assert sorted(vendor.accepted) == sorted(numbers)


def test_transient_failures_are_retried_until_delivered_once(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()
    failures = iter([TransientError("HTTP 503", status=503), TransientError("timeout")])
    vendor.behaviour = lambda numbers: next(failures, None)
    outcomes = asyncio.run(deliver_all(worker(vendor, ledger), ["A", "B"]))
    assert outcomes == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert len(vendor.requests) == 3
    assert vendor.accepted == ["A", "B"]


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
    assert sorted(vendor.accepted) == sorted(n for n in numbers if n != "O17")
    assert len(vendor.accepted) == len(set(vendor.accepted))  # every good order exactly once
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
    assert sorted(vendor.accepted) == sorted(n for n in numbers if n not in ("O3", "O8"))


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
        task = asyncio.gather(*(w.submit(n, payload(n)) for n in ("A", "B")))
        while not task.done():
            seen_states.append(w.health.state)
            await asyncio.sleep(0.002)
        await w.aclose()
        return [r.outcome for r in task.result()]

    assert asyncio.run(scenario()) == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert "paused" in seen_states
    assert w.health.state == "ok"


def test_the_same_order_in_flight_twice_is_sent_once(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()
    w = worker(vendor, ledger)

    async def scenario() -> list[Outcome]:
        w.start()
        results = await asyncio.gather(w.submit("A", payload("A")), w.submit("A", payload("A")))
        await w.aclose()
        return sorted(r.outcome.value for r in results)  # type: ignore[return-value]

    assert asyncio.run(scenario()) == ["delivered", "duplicate"]
    assert vendor.accepted == ["A"]


def test_orders_already_in_the_ledger_are_not_sent(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> list[Outcome]:
        await ledger.claim("fake", [ClaimRequest("A", "x")], owner="old", lease_s=60)
        await ledger.mark_delivered("fake", [ClaimRequest("A", "x")], owner="old")
        return await deliver_all(worker(vendor, ledger), ["A", "B"])

    vendor = FakeVendor()
    assert asyncio.run(scenario()) == [Outcome.DUPLICATE, Outcome.DELIVERED]
    assert vendor.accepted == ["B"]


@pytest.mark.parametrize("force", [True])
def test_resend_mode_sends_delivered_orders_again(ledger, force: bool) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> list[Outcome]:
        await ledger.claim("fake", [ClaimRequest("A", "x")], owner="old", lease_s=60)
        await ledger.mark_delivered("fake", [ClaimRequest("A", "x")], owner="old")
        return await deliver_all(worker(vendor, ledger, force=force), ["A"])

    vendor = FakeVendor()
    assert asyncio.run(scenario()) == [Outcome.DELIVERED]
    assert vendor.accepted == ["A"]


def test_delivered_orders_are_recorded_in_the_ledger(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor = FakeVendor()

    async def scenario() -> dict[str, State]:
        await deliver_all(worker(vendor, ledger), ["A", "B"])
        return await ledger.states("fake", ["A", "B"])

    assert asyncio.run(scenario()) == {"A": State.DELIVERED, "B": State.DELIVERED}
