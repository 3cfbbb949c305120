"""The end-to-end flow on a real broker: decode → transform → deliver → ledger → commit."""

from __future__ import annotations

import signal
import struct
import time

import pytest

from consumer.sandbox.control import SandboxControl
from tests.integration.conftest import DESTINATIONS, Stage, wait_until
from tests.integration.expectations import expected_keys

pytestmark = pytest.mark.integration
VENDORS = ("nibble", "nudgify", "custobar")


def delivered_keys(sandbox: SandboxControl) -> dict[str, list[str]]:
    return {v: [r["key"] for r in sandbox.records(v)] for v in VENDORS}


def assert_each_delivered_once(sandbox: SandboxControl, orders: list[dict]) -> None:  # type: ignore[type-arg]
    expected = expected_keys(orders)
    got = delivered_keys(sandbox)
    for vendor in VENDORS:
        assert sorted(set(got[vendor])) == sorted(expected[vendor]), vendor
        assert sandbox.stats()[vendor]["duplicates"] == 0, vendor


def test_every_order_reaches_every_destination_and_offsets_commit_to_the_end(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(300)
    outcomes = stage.run_in_process()
    assert_each_delivered_once(sandbox, orders)
    assert stage.committed() == stage.end_offsets()
    assert sum(outcomes["nibble"].values()) == 300
    # Batches fill across records and partitions: far fewer requests than orders.
    stats = sandbox.stats()
    assert stats["nibble"]["requests"] <= 300 / 50 * 3
    assert max(sandbox.request_sizes("nibble")) <= 50


def test_replaying_the_topic_from_offset_zero_sends_nothing_twice(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(120)
    stage.run_in_process()
    requests_before = {v: sandbox.stats()[v]["requests"] for v in VENDORS}
    replay = stage.run_in_process(CONSUMER_GROUP_ID=stage.group + "-replay")  # offset 0 again
    assert {v: sandbox.stats()[v]["requests"] for v in VENDORS} == requests_before
    assert replay["nibble"].get("delivered", 0) == 0
    assert replay["nibble"]["duplicate"] == len(expected_keys(orders)["nibble"])
    assert_each_delivered_once(sandbox, orders)


def test_the_same_order_twice_in_the_topic_is_sent_once_per_vendor(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(60, seed=5, prefix="DUP")
    stage.produce_orders(60, seed=5, prefix="DUP")  # the very same orders again
    outcomes = stage.run_in_process()
    assert_each_delivered_once(sandbox, orders)
    assert outcomes["nibble"]["duplicate"] == len(expected_keys(orders)["nibble"])


def test_transient_vendor_failures_are_retried_without_loss_or_duplicates(
    stage: Stage, sandbox: SandboxControl
) -> None:
    sandbox.set_faults("nibble", error_rate=0.3, error_status=503)
    sandbox.set_faults("nudgify", rate_limit_rate=0.3, retry_after_s=0.2)
    sandbox.set_faults("custobar", timeout_rate=0.2, timeout_s=1.5)
    orders = stage.produce_orders(150)
    stage.run_in_process(CONSUMER_HTTP_TIMEOUT_S="1")
    assert_each_delivered_once(sandbox, orders)
    assert stage.committed() == stage.end_offsets()


def test_poison_records_are_dead_lettered_with_reasons_and_the_partition_moves_on(
    stage: Stage, sandbox: SandboxControl
) -> None:
    poison = [(b"garbage", b"\x07\x01\x02"), (b"empty", b"")]
    orders = stage.produce_orders(40, extra=poison)
    outcomes = stage.run_in_process()
    assert outcomes["*"]["dead_lettered"] == 2
    letters = stage.dead_letters(expected=2)
    assert len(letters) == 2
    for letter in letters:
        headers = dict(letter.headers())
        assert headers["dlq.destination"] == b"*"
        assert headers["dlq.error.class"] == b"undecodable"
        assert headers["dlq.original.topic"] == stage.topic.encode()
        assert headers["dlq.error.message"]
    assert {letter.value() for letter in letters} == {b"\x07\x01\x02", b""}
    assert_each_delivered_once(sandbox, orders)
    assert stage.committed() == stage.end_offsets()


def test_wrong_credentials_pause_the_vendor_without_dead_lettering_anything(
    stage: Stage, sandbox: SandboxControl
) -> None:
    sandbox.set_faults("nudgify", reject_auth=True)
    orders = stage.produce_orders(50)
    process = stage.spawn(CONSUMER_HEALTH_PORT="0")
    try:
        nibble_done = len(expected_keys(orders)["nibble"])
        assert wait_until(lambda: len(sandbox.records("nibble")) >= nibble_done, timeout_s=60)
        time.sleep(1.0)
        assert sandbox.records("nudgify") == []
        # Offsets wait for the paused vendor: nothing committed past undelivered orders.
        assert sum(max(o, 0) for o in stage.committed().values()) < 50
        sandbox.clear_faults()
        assert wait_until(lambda: stage.committed() == stage.end_offsets(), timeout_s=60)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert stage.dead_letters(expected=0, timeout_s=1) == []
    assert_each_delivered_once(sandbox, orders)


def test_a_slow_vendor_fills_the_in_flight_bound_and_fetching_pauses_and_resumes(
    stage: Stage, sandbox: SandboxControl
) -> None:
    sandbox.set_faults("custobar", latency_ms=150)
    orders = stage.produce_orders(200)
    stage.run_in_process(CONSUMER_MAX_IN_FLIGHT="25")
    assert_each_delivered_once(sandbox, orders)
    assert stage.committed() == stage.end_offsets()


def test_sigterm_drains_in_flight_work_commits_and_exits_in_time(
    stage: Stage, sandbox: SandboxControl
) -> None:
    sandbox.set_faults("nibble", latency_ms=300)
    orders = stage.produce_orders(300)
    process = stage.spawn(CONSUMER_SHUTDOWN_GRACE_S="10")
    assert wait_until(lambda: len(sandbox.records("nibble")) > 0, timeout_s=60)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert time.monotonic() - started < 15
    sandbox.clear_faults()
    # Each lane commits what it drained; a lane's first sends may all come from one partition.
    committed_after_stop = {d: stage.committed(d) for d in DESTINATIONS}
    stage.run_in_process()  # a restart finishes the rest, sending nothing twice
    assert_each_delivered_once(sandbox, orders)
    for destination, offsets in committed_after_stop.items():
        assert sum(max(offset, 0) for offset in offsets.values()) > 0, destination


def test_confluent_wire_format_with_a_schema_registry(
    stage: Stage, sandbox: SandboxControl, sandbox_url: str
) -> None:
    from consumer.devenv.samples import encode_confluent, produce, register_schema, sample_orders

    schema_id = register_schema(f"{sandbox_url}/registry", f"{stage.topic}-value")
    orders = sample_orders(30, seed=11, prefix="REG")
    produce(stage.bootstrap, stage.topic, orders,
            encode=lambda r: encode_confluent(r, stage.schema, schema_id),
            extra=[(b"unknown", struct.pack(">bI", 0, 424242) + b"\x00")])  # fmt: skip
    outcomes = stage.run_in_process(CONSUMER_SCHEMA_REGISTRY_URL=f"{sandbox_url}/registry")
    assert outcomes["*"]["dead_lettered"] == 1
    assert b"unknown schema id" in dict(stage.dead_letters(1)[0].headers())["dlq.error.message"]
    assert_each_delivered_once(sandbox, orders)


def test_one_bad_order_in_a_batch_is_dead_lettered_for_that_vendor_and_the_rest_delivered_once(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(120, seed=21)
    expected = expected_keys(orders)
    bad_nibble = sorted(expected["nibble"])[7]  # Nibble names no sale: found by bisection
    bad_nudgify = sorted(expected["nudgify"])[3]  # Nudgify names orders.N: removed exactly
    bad_custobar = sorted(expected["custobar"])[11]  # Custobar names no row: bisection
    sandbox.set_faults("nibble", reject_orders=[bad_nibble])
    sandbox.set_faults("nudgify", reject_orders=[bad_nudgify])
    sandbox.set_faults("custobar", reject_orders=[bad_custobar])
    outcomes = stage.run_in_process()
    got = delivered_keys(sandbox)
    for vendor, bad in (("nibble", bad_nibble), ("nudgify", bad_nudgify),
                        ("custobar", bad_custobar)):  # fmt: skip
        assert sorted(got[vendor]) == sorted(expected[vendor] - {bad}), vendor
        assert outcomes[vendor]["dead_lettered"] == 1, vendor
    headers = [dict(m.headers()) for m in stage.dead_letters(expected=3)]
    letters = {h["dlq.destination"].decode(): h for h in headers}
    assert set(letters) == {"nibble", "nudgify", "custobar"}
    assert b"was rejected" in letters["nibble"]["dlq.error.message"]  # Nibble's errorMessage
    assert b"Email does not match" in letters["nudgify"]["dlq.error.message"]
    assert b"rejected by the sandbox" in letters["custobar"]["dlq.error.message"]
    assert stage.committed() == stage.end_offsets()
