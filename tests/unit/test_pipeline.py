"""A record is done only when every destination is settled; poison and rejects are dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from consumer.decode import Decoder
from consumer.deliver.destination import Outbound
from consumer.deliver.retry import Backoff
from consumer.deliver.worker import DestinationWorker
from consumer.devenv.samples import encode_schemaless, load_schema, sample_orders
from consumer.errors import DeadLetterError, RejectedError
from consumer.ledger import Ledger, State
from consumer.model import Invalid, Order, Payload, Skip, TransformResult
from consumer.pipeline import DeadLetter, Pipeline, RawRecord

SCHEMA = load_schema()
FAST = Backoff(initial_s=0.001, maximum_s=0.01)


class Vendor:
    resend_changed = False
    max_batch = 50

    def __init__(self, name: str, rule: Callable[[Order], TransformResult] | None = None,
                 reject: set[str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.rule = rule or (lambda order: Payload(items=({"n": order.order_number},)))
        self.reject = reject or set()
        self.accepted: list[str] = []

    def transform(self, order: Order) -> TransformResult:
        return self.rule(order)

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        bad = {i: "no" for i, o in enumerate(batch) if o.order_number in self.reject}
        if bad:
            raise RejectedError("Bad Request.", status=400, culprits=bad)
        self.accepted.extend(o.order_number for o in batch)

    async def aclose(self) -> None:
        pass


class MemoryDeadLetters:
    def __init__(self, failures: int = 0) -> None:
        self.letters: list[tuple[RawRecord, DeadLetter]] = []
        self.failures = failures

    async def send(self, record: RawRecord, letter: DeadLetter) -> None:
        if self.failures:
            self.failures -= 1
            raise DeadLetterError("topic unavailable")
        self.letters.append((record, letter))


def build(ledger: Ledger, vendors: list[Vendor], sink: MemoryDeadLetters) -> Pipeline:
    workers = [
        DestinationWorker(
            v,
            ledger,
            owner="t",
            secret=b"k" * 16,
            linger_s=0.005,
            concurrency=2,
            backoff=FAST,
            credentials_retry_s=0.01,
            lease_s=60,
        )
        for v in vendors
    ]
    decoder = Decoder(reader_schema=SCHEMA, writer_schema=SCHEMA)
    return Pipeline(decoder=decoder, workers=workers, ledger=ledger, dead_letters=sink,
                    owner="t", backoff=FAST)  # fmt: skip


def records(count: int) -> list[RawRecord]:
    return [
        RawRecord("orders", 0, i, r["order_number"].encode(), encode_schemaless(r, SCHEMA))
        for i, r in enumerate(sample_orders(count))
    ]


async def process_all(pipeline: Pipeline, batch: list[RawRecord]) -> list[dict[str, str]]:
    for worker in pipeline.workers:
        worker.start()
    try:
        return await asyncio.gather(*(pipeline.process(r) for r in batch))
    finally:
        for worker in pipeline.workers:
            await worker.aclose()


def test_each_destination_settles_independently(ledger) -> None:  # type: ignore[no-untyped-def]
    skip_all = Vendor("b", rule=lambda order: Skip("no token"))
    invalid = Vendor("c", rule=lambda order: Invalid("nibble id without token"))
    plain = Vendor("a")
    sink = MemoryDeadLetters()
    outcomes = asyncio.run(process_all(build(ledger, [plain, skip_all, invalid], sink), records(5)))
    assert outcomes == [{"a": "delivered", "b": "skipped", "c": "dead_lettered"}] * 5
    assert len(plain.accepted) == 5
    assert {letter.destination for _, letter in sink.letters} == {"c"}
    assert sink.letters[0][1].error_class == "invalid_for_destination"


def test_a_vendor_rejection_dead_letters_that_order_for_that_destination_only(ledger) -> None:  # type: ignore[no-untyped-def]
    batch = records(6)
    bad = sample_orders(6)[2]["order_number"]
    strict, lenient = Vendor("strict", reject={bad}), Vendor("lenient")
    sink = MemoryDeadLetters()
    outcomes = asyncio.run(process_all(build(ledger, [strict, lenient], sink), batch))
    assert outcomes[2] == {"strict": "dead_lettered", "lenient": "delivered"}
    assert sorted(strict.accepted) == sorted(r.key.decode() for r in batch if r.key != bad.encode())  # type: ignore[union-attr]
    ((record, letter),) = sink.letters
    assert record.offset == 2
    assert (letter.destination, letter.status, letter.order_number) == ("strict", 400, bad)
    headers = dict(letter.headers(record))
    assert headers["dlq.original.offset"] == b"2"
    assert headers["dlq.error.message"] == b"no"

    async def recorded() -> dict[str, State]:
        return await ledger.states("strict", [bad])

    assert asyncio.run(recorded()) == {bad: State.DEAD_LETTERED}


def test_an_undecodable_record_is_dead_lettered_and_never_reaches_a_vendor(ledger) -> None:  # type: ignore[no-untyped-def]
    vendor, sink = Vendor("a"), MemoryDeadLetters()
    poison = RawRecord("orders", 1, 9, b"k", b"\x01\x02")
    outcomes = asyncio.run(process_all(build(ledger, [vendor], sink), [poison]))
    assert outcomes == [{"*": "dead_lettered"}]
    assert vendor.accepted == []
    assert sink.letters[0][1].error_class == "undecodable"


def test_the_record_waits_until_the_dead_letter_is_acknowledged(ledger) -> None:  # type: ignore[no-untyped-def]
    sink = MemoryDeadLetters(failures=3)
    poison = RawRecord("orders", 0, 0, None, b"\x01")
    outcomes = asyncio.run(process_all(build(ledger, [Vendor("a")], sink), [poison]))
    assert outcomes == [{"*": "dead_lettered"}]
    assert len(sink.letters) == 1
