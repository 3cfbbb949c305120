"""Fault injection against real consumer processes: vendor storms and outages, wrong
credentials, poison pills, schema evolution, out-of-order completion under SIGKILL, a missing
dead-letter topic, and canary secrets / personal data that must never leak.

Every scenario ends with `measure(...)` (nothing lost, dead letters as expected)."""

from __future__ import annotations

import copy
import json
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from consumer.config import PACKAGED_SCHEMA
from consumer.devenv.kafka import create_topic, free_port
from consumer.devenv.samples import (
    encode_confluent,
    encode_schemaless,
    register_schema,
    sample_orders,
)
from consumer.sandbox.control import SandboxControl
from consumer.sandbox.settings import SandboxSettings
from tests.integration.chaos.conftest import VENDORS, measure, scaled
from tests.integration.conftest import ROOT, Stage, readiness, wait_until
from tests.integration.expectations import expected_keys

pytestmark = [pytest.mark.integration, pytest.mark.chaos]
RETRY_COMMITTED = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}

# Canary values: every credential of this module's sandbox (and so of every consumer started
# here) carries CANARY, so a leak of any of them, even a partial one, is found by one search.
CANARY = "CANARYq7x"
CANARY_CREDENTIALS = SandboxSettings(
    nibble_api_key=f"{CANARY}-nibble-key-3f9a",
    nibble_api_secret=f"{CANARY}-nibble-secret-8c21",
    nudgify_api_key=f"{CANARY}-nudgify-key-51d0",
    custobar_token=f"{CANARY}-custobar-token-a77e",
    custobar_password=f"{CANARY}-custobar-password-0b3c",
)
CANARY_IDEMPOTENCY_SECRET = f"{CANARY}-idempotency-secret-4242"
CANARY_KAFKA_PASSWORD = f"{CANARY}-kafka-password-9e9e"
CANARY_EMAIL_LOCAL = "canaryq7x.buyer"
CANARY_IP = "203.0.113.177"
CANARY_PHONE = "+358409977123"
CANARY_FIRST, CANARY_LAST = "Canaryq7xfirst", "Canaryq7xlast"


@pytest.fixture(scope="module")
def sandbox_settings() -> SandboxSettings:
    """This module's sandbox accepts (only) the canary credentials."""
    return CANARY_CREDENTIALS


# ---------------------------------------------------------------------------------- helpers


def produce_raw(
    stage: Stage, items: list[tuple[bytes | None, bytes]], *, partition: int | None = None
) -> list[tuple[int, int]]:
    """Produce in order; returns (partition, offset) of each record."""
    producer = Producer(
        {
            "bootstrap.servers": stage.bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
        }
    )
    where: list[tuple[int, int] | None] = [None] * len(items)

    def reporter(index: int) -> Any:
        def report(error: KafkaError | None, message: Message) -> None:
            if error is None:
                where[index] = (int(message.partition() or 0), int(message.offset() or 0))

        return report

    for index, (key, value) in enumerate(items):
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        producer.produce(stage.topic, key=key, value=value, on_delivery=reporter(index), **extra)
    assert producer.flush(30) == 0, "the broker did not acknowledge every record"
    assert all(w is not None for w in where)
    return [w for w in where if w is not None]


def schemaless(stage: Stage, orders: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(o["order_number"].encode(), encode_schemaless(o, stage.schema)) for o in orders]


def committed(stage: Stage) -> dict[int, int]:
    """The group's committed offsets, riding out a coordinator that is still loading/moving."""
    for _ in range(20):
        try:
            return stage.committed()
        except KafkaException as exc:
            if exc.args[0].retriable() or exc.args[0].code() in RETRY_COMMITTED:
                time.sleep(0.25)
                continue
            raise
    return stage.committed()


def caught_up(stage: Stage) -> bool:
    """Every partition that holds records is committed to its end."""
    done, ends = committed(stage), stage.end_offsets()
    return all(done[p] == end for p, end in ends.items() if end > 0)


def stop(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 30
) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def running(stage: Stage, **env: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A consumer process, stopped (SIGTERM, then SIGKILL) whatever happens."""
    process = stage.spawn(**env)
    try:
        yield process
    finally:
        stop(process)


def all_arrived(sandbox: SandboxControl, expected: dict[str, set[str]], *vendors: str) -> bool:
    return all(expected[v] <= {r["key"] for r in sandbox.records(v)} for v in vendors)


def headers_of(letter: Message) -> dict[str, bytes]:
    return {k: v for k, v in (letter.headers() or []) if isinstance(v, bytes)}


# --------------------------------------------------------------------------------- scenarios


def test_vendor_5xx_storm_and_timeouts_delay_delivery_until_recovery_and_429s_wait_retry_after(
    stage: Stage, sandbox: SandboxControl
) -> None:
    sandbox.set_faults("nibble", error_rate=1.0, error_status=500)
    sandbox.set_faults("custobar", timeout_rate=1.0, timeout_s=2)
    sandbox.set_faults("nudgify", rate_limit_rate=0.5, retry_after_s=1)  # for the whole run
    orders = stage.produce_orders(scaled(120), seed=4)
    # Small Nudgify batches: a dozen requests, so a 50% rate limit is certain to be met.
    with running(stage, CONSUMER_HTTP_TIMEOUT_S="1", CONSUMER_NUDGIFY_BATCH_SIZE="10"):
        assert wait_until(
            lambda: (
                sandbox.stats()["nibble"]["failed_requests"] >= 10
                and sandbox.stats()["custobar"]["requests"] >= 3
            ),
            timeout_s=30,
        )
        time.sleep(1.0)
        assert sandbox.records("nibble") == [] and sandbox.records("custobar") == []
        assert not caught_up(stage), "offsets committed past orders that were never delivered"
        sandbox.set_faults("nibble")  # the storm ends
        sandbox.set_faults("custobar")
        assert wait_until(lambda: caught_up(stage), timeout_s=45)
    stats = sandbox.stats()
    assert stats["nudgify"]["statuses"].get("429", 0) > 0, "no 429 was ever answered"
    assert {v: stats[v]["early_retries"] for v in VENDORS} == dict.fromkeys(VENDORS, 0)
    assert stats["nibble"]["statuses"].get("500", 0) >= 10
    measure(
        "4. vendor 5xx storm, timeouts and 429 Retry-After",
        stage,
        sandbox,
        orders,
        expected_dead_lettered=0,
    )


def test_one_vendor_down_for_the_whole_run_holds_offsets_back_while_the_others_deliver(
    stage: Stage, sandbox: SandboxControl
) -> None:
    sandbox.set_faults("custobar", down=True)
    orders = stage.produce_orders(scaled(90), seed=5)
    expected = expected_keys(orders)
    with running(stage) as process:
        assert wait_until(lambda: all_arrived(sandbox, expected, "nibble", "nudgify"), timeout_s=30)
        time.sleep(1.5)  # several commit intervals
        assert sandbox.records("custobar") == []
        assert sandbox.stats()["custobar"]["failed_requests"] > 0
        done, ends = committed(stage), stage.end_offsets()
        assert all(done[p] < ends[p] for p in ends), (done, ends)
        assert stage.dead_letters(0, timeout_s=1) == []
        assert process.poll() is None
        sandbox.clear_faults()
        assert wait_until(lambda: caught_up(stage), timeout_s=45)
    measure("5. one vendor down, then back", stage, sandbox, orders, expected_dead_lettered=0)


@pytest.mark.parametrize(
    ("vendor", "faults", "why"),
    [
        ("nibble", {"reject_auth": True}, "credentials"),
        ("nudgify", {"account_state": "lite"}, "Upgrade your plan"),
    ],
    ids=["nibble-401", "nudgify-402-lite-plan"],
)
def test_refused_credentials_pause_the_vendor_say_why_and_dead_letter_nothing(
    stage: Stage, sandbox: SandboxControl, vendor: str, faults: dict[str, Any], why: str
) -> None:
    sandbox.set_faults(vendor, **faults)
    orders = stage.produce_orders(scaled(60), seed=6)
    expected = expected_keys(orders)
    others = [v for v in VENDORS if v != vendor]
    port = free_port()
    with running(stage, CONSUMER_HEALTH_PORT=str(port)) as process:
        assert wait_until(lambda: all_arrived(sandbox, expected, *others), timeout_s=30)

        def paused() -> bool:
            ready = readiness(port)
            return ready is not None and ready[1]["destinations"][vendor]["state"] == "paused"

        assert wait_until(paused, timeout_s=10)
        ready = readiness(port)
        assert ready is not None
        status, body = ready
        # A paused vendor never makes the process unready (it must not stall a rollout): the
        # body and the metrics say which destination waits, and why.
        assert status == 200 and body["ready"] is True
        assert why.lower() in body["destinations"][vendor]["reason"].lower(), body
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
        assert f'order_consumer_destination_paused{{destination="{vendor}"}} 1' in metrics
        assert all(body["destinations"][v]["state"] != "paused" for v in others)
        assert sandbox.records(vendor) == []
        assert not caught_up(stage)
        assert stage.dead_letters(0, timeout_s=1) == []
        sandbox.clear_faults()
        assert wait_until(lambda: caught_up(stage), timeout_s=45)
        ready = readiness(port)
        assert ready is not None and ready[1]["destinations"][vendor]["state"] == "ok"
        assert process.poll() is None
    measure(
        f"6. refused credentials ({vendor}: {why})",
        stage,
        sandbox,
        orders,
        expected_dead_lettered=0,
    )


def test_poison_pills_are_dead_lettered_with_reasons_and_the_partition_moves_on(
    stage: Stage, sandbox: SandboxControl, sandbox_url: str
) -> None:
    registry = f"{sandbox_url}/registry"
    schema_id = register_schema(registry, f"{stage.topic}-value")
    prefix = f"P{stage.name[:4]}"
    good = sample_orders(scaled(60), seed=7, prefix=prefix)
    bad_total, bad_quantity, unknown_id = sample_orders(3, seed=8, prefix=f"BAD{prefix}")
    bad_total = {**bad_total, "total": bad_total["total"] + Decimal("5.00")}
    bad_quantity = copy.deepcopy(bad_quantity)
    bad_quantity["lines"][0]["quantity"] = -1

    def confluent(order: dict[str, Any], sid: int = schema_id) -> tuple[bytes, bytes]:
        return order["order_number"].encode(), encode_confluent(order, stage.schema, sid)

    poison = {
        b"poison-garbage": (b"\x07\x01\x02 not avro", "undecodable", "Confluent wire format"),
        b"poison-bad-avro": (
            struct.pack(">bI", 0, schema_id) + b"\xff\xff\xff\xff",
            "undecodable",
            "Avro decoding failed",
        ),
        unknown_id["order_number"].encode(): (
            confluent(unknown_id, 987654)[1],
            "undecodable",
            "unknown schema id 987654",
        ),
        bad_total["order_number"].encode(): (confluent(bad_total)[1], "invalid_order", "total"),
        bad_quantity["order_number"].encode(): (
            confluent(bad_quantity)[1],
            "invalid_order",
            "quantity must be positive",
        ),
    }
    half = len(good) // 2
    produce_raw(stage, [confluent(o) for o in good[:half]])
    produce_raw(stage, [(key, value) for key, (value, _, _) in poison.items()])
    produce_raw(stage, [confluent(o) for o in good[half:]])  # behind the poison

    outcomes = stage.run_in_process(CONSUMER_SCHEMA_REGISTRY_URL=registry)
    assert outcomes["*"]["dead_lettered"] == len(poison)
    assert caught_up(stage)
    letters = stage.dead_letters(len(poison))
    assert {letter.key() for letter in letters} == set(poison)
    for letter in letters:
        value, error_class, reason = poison[letter.key()]
        headers = headers_of(letter)
        assert letter.value() == value
        assert headers["dlq.error.class"] == error_class.encode(), headers
        assert reason.encode() in headers["dlq.error.message"], headers
        assert headers["dlq.destination"] == b"*"
    measure(
        "7. poison pills",
        stage,
        sandbox,
        good,
        produced=len(good) + len(poison),
        expected_dead_lettered=len(poison),
    )


def test_records_written_with_a_newer_or_older_schema_version_are_all_delivered(
    stage: Stage, sandbox: SandboxControl, sandbox_url: str
) -> None:
    import fastavro

    registry = f"{sandbox_url}/registry"
    subject = f"{stage.topic}-value"
    base = json.loads(PACKAGED_SCHEMA.read_text(encoding="utf-8"))
    newer = copy.deepcopy(base)  # v3: a new top-level field and a new customer field
    newer["fields"].append({"name": "loyalty_tier", "type": ["null", "string"], "default": None})
    customer = next(f for f in newer["fields"] if f["name"] == "customer")["type"]
    customer["fields"].append({"name": "locale", "type": "string", "default": "en"})
    dropped = {"tags", "custom_fields", "cart_nibble_id"}  # v1: before these existed
    older = copy.deepcopy(base)
    older["fields"] = [f for f in older["fields"] if f["name"] not in dropped]
    ids = {
        name: register_schema(registry, subject, json.dumps(schema))
        for name, schema in (("older", older), ("current", base), ("newer", newer))
    }
    assert len(set(ids.values())) == 3

    prefix = f"E{stage.name[:4]}"
    count = scaled(30)
    new_orders = sample_orders(count, seed=9, prefix=f"{prefix}N", start=2 * count)
    for order in new_orders:
        order["loyalty_tier"] = "gold"
        order["customer"] = {**order["customer"], "locale": "fi"}
    old_orders = sample_orders(count, seed=10, prefix=f"{prefix}O")
    for order in old_orders:  # what the reader will see: the reader schema's defaults
        order.update(tags=[], custom_fields={}, cart_nibble_id=None)
    # Distinct indexes: the platform order ids (Nudgify's keys) must not repeat across batches.
    current_orders = sample_orders(count, seed=11, prefix=f"{prefix}C", start=count)

    def encoded(orders: list[dict[str, Any]], schema: Any, sid: int) -> list[Any]:
        parsed = fastavro.parse_schema(copy.deepcopy(schema))
        return [(o["order_number"].encode(), encode_confluent(o, parsed, sid)) for o in orders]

    produce_raw(
        stage,
        encoded(old_orders, older, ids["older"])
        + encoded(current_orders, base, ids["current"])
        + encoded(new_orders, newer, ids["newer"]),
    )
    outcomes = stage.run_in_process(CONSUMER_SCHEMA_REGISTRY_URL=registry)
    assert "*" not in outcomes, outcomes
    assert caught_up(stage)
    # Old records got the reader's defaults (no company fields); new ones kept theirs.
    rows = {r["key"]: r["payload"]["rows"] for r in sandbox.records("custobar")}
    old_keys = {o["order_number"] for o in old_orders} & set(rows)
    new_keys = {o["order_number"] for o in new_orders} & set(rows)
    assert old_keys and new_keys
    assert not any("COMPANY__channel" in row for k in old_keys for row in rows[k])
    assert all(any("COMPANY__channel" in row for row in rows[k]) for k in new_keys)
    as_read = [
        {**o, "customer": {k: v for k, v in o["customer"].items() if k != "locale"}}
        for o in new_orders
    ]
    orders = old_orders + current_orders + as_read
    measure(
        "8. schema evolution (older + newer writers)",
        stage,
        sandbox,
        orders,
        expected_dead_lettered=0,
    )


def test_a_held_record_keeps_its_partition_offset_back_through_sigkill_and_is_delivered_after(
    stage: Stage, sandbox: SandboxControl
) -> None:
    hold_s = 15.0
    prefix = f"H{stage.name[:4]}"
    orders = sample_orders(scaled(40) + 11, seed=12, prefix=prefix)
    expected = expected_keys(orders)
    held = next(o for o in orders[10:] if o["order_number"] in expected["custobar"])
    before = orders[:10]
    after = [o for o in orders[10:] if o is not held]
    # The restart takes over the dead process's claim and, once its session ends, its partition.
    lease = {"CONSUMER_CLAIM_LEASE_S": "10", "CONSUMER_KAFKA__SESSION_TIMEOUT_MS": "6000"}
    partition = 0

    [(_, first)] = produce_raw(stage, schemaless(stage, before[:1]), partition=partition)
    produce_raw(stage, schemaless(stage, before[1:]), partition=partition)
    process = stage.spawn(**lease)
    try:
        assert wait_until(lambda: committed(stage)[partition] == first + len(before), timeout_s=30)
        sandbox.set_faults("custobar", hold_orders=[held["order_number"]], hold_s=hold_s)
        requests = sandbox.stats()["custobar"]["requests"]
        [(_, held_offset)] = produce_raw(stage, schemaless(stage, [held]), partition=partition)
        assert wait_until(lambda: sandbox.stats()["custobar"]["requests"] > requests, timeout_s=10)
        produce_raw(stage, schemaless(stage, after), partition=partition)
        later = expected_keys(after)
        assert wait_until(lambda: all_arrived(sandbox, later, *VENDORS), timeout_s=30)
        time.sleep(1.0)  # several commit intervals: later records are done, the held one is not
        assert committed(stage)[partition] == held_offset
        process.kill()  # SIGKILL with the held request still in flight
        process.wait(timeout=10)
    finally:
        stop(process, signal.SIGKILL)
    assert committed(stage)[partition] == held_offset
    assert held["order_number"] not in {r["key"] for r in sandbox.records("custobar")}
    # The vendor finishes the request the dead process had sent (it cannot know the sender
    # died); wait for it here so it cannot land in a later test's sandbox records.
    sandbox.clear_faults()
    assert wait_until(
        lambda: held["order_number"] in {r["key"] for r in sandbox.records("custobar")},
        timeout_s=hold_s + 10,
    )
    with running(stage, **lease):
        assert wait_until(lambda: caught_up(stage), timeout_s=30)
    # The one request in flight at SIGKILL may reach the vendor twice (the open window).
    stats = sandbox.stats()
    assert stats["custobar"]["duplicates"] <= 1
    assert stats["nibble"]["duplicates"] == stats["nudgify"]["duplicates"] == 0
    measure(
        "12. out-of-order completion + SIGKILL",
        stage,
        sandbox,
        orders,
        expected_dead_lettered=0,
        allowed_duplicates=1,
    )


def test_a_missing_dead_letter_topic_keeps_the_poison_offset_uncommitted_until_it_exists(
    stage: Stage, sandbox: SandboxControl
) -> None:
    missing = f"{stage.dlq}-late"
    stage.dlq = missing  # stage.dead_letters() and measure() read the late topic
    orders = sample_orders(scaled(60), seed=15, prefix=f"D{stage.name[:4]}")
    half = len(orders) // 2
    produce_raw(stage, schemaless(stage, orders[:half]))
    [(partition, poison_offset)] = produce_raw(stage, [(b"poison", b"\x07 not avro")])
    produce_raw(stage, schemaless(stage, orders[half:]))
    expected = expected_keys(orders)
    with running(stage, CONSUMER_DEAD_LETTER_TOPIC=missing) as process:
        assert wait_until(lambda: all_arrived(sandbox, expected, *VENDORS), timeout_s=30)
        time.sleep(2.0)
        done = committed(stage)
        assert done[partition] <= poison_offset, (done, poison_offset)
        assert not caught_up(stage)
        assert process.poll() is None
        create_topic(stage.bootstrap, missing, partitions=1)
        assert wait_until(lambda: caught_up(stage), timeout_s=45)
    [letter] = stage.dead_letters(1)
    assert headers_of(letter)["dlq.original.offset"] == str(poison_offset).encode()
    measure(
        "15. dead-letter topic created late",
        stage,
        sandbox,
        orders,
        produced=len(orders) + 1,
        expected_dead_lettered=1,
    )


def canary_order(order: dict[str, Any], n: int) -> dict[str, Any]:
    customer = {
        **order["customer"],
        "email": f"{CANARY_EMAIL_LOCAL}{n}@example.com",
        "ip": f"{CANARY_IP}, 10.0.0.1",
        "phone": CANARY_PHONE,
        "first_name": CANARY_FIRST,
        "last_name": CANARY_LAST,
    }
    return {**order, "customer": customer}


def test_secrets_and_personal_data_never_appear_in_logs_dead_letters_or_errors(
    stage: Stage, sandbox: SandboxControl, tmp_path: Path
) -> None:
    canaries = [CANARY, CANARY_EMAIL_LOCAL, CANARY_IP, CANARY_PHONE, CANARY_FIRST, CANARY_LAST]
    prefix = f"S{stage.name[:4]}"
    orders = [
        canary_order(o, i) for i, o in enumerate(sample_orders(scaled(40), seed=16, prefix=prefix))
    ]
    # One order every vendor refuses (each answer dead-letters it for that vendor) and one
    # whose totals do not add up (dead-lettered as a record): both full of personal data.
    refused = canary_order(
        {
            **sample_orders(1, seed=17, prefix=f"R{prefix}")[0],
            "state": "COMPLETE",
            "order_id": 777001,
        },
        900,
    )
    broken = canary_order(sample_orders(1, seed=18, prefix=f"B{prefix}")[0], 901)
    broken["total"] += Decimal("1.00")
    refused_by = expected_keys([refused])
    assert all(refused_by[v] for v in VENDORS)
    for vendor in VENDORS:
        sandbox.set_faults(vendor, reject_orders=sorted(refused_by[vendor]))
    sandbox.set_faults("nibble", reject_auth=True)  # an auth failure first
    produce_raw(stage, schemaless(stage, [*orders[:20], refused, broken, *orders[20:]]))

    log_path = tmp_path / "canary.log"
    env = {
        "CONSUMER_IDEMPOTENCY_SECRET": CANARY_IDEMPOTENCY_SECRET,
        "CONSUMER_KAFKA__SASL_PASSWORD": CANARY_KAFKA_PASSWORD,
        "CONSUMER_KAFKA__DEBUG": "broker,topic,msg,protocol",
        "CONSUMER_LOG_LEVEL": "debug",
    }
    with running(stage, log_path=log_path, **env):
        assert wait_until(lambda: sandbox.stats()["nibble"]["rejected_requests"] >= 2, timeout_s=30)
        sandbox.set_faults("nibble", reject_orders=sorted(refused_by["nibble"]))  # auth is back
        assert wait_until(lambda: caught_up(stage), timeout_s=45)

    # Start-up errors name the variable, never its value (a typo'd secret, a short secret).
    bad_env = {
        **stage.env(),
        "CONSUMER_NIBBLE_API_SECRETT": CANARY_CREDENTIALS.nibble_api_secret,
        "CONSUMER_IDEMPOTENCY_SECRET": f"{CANARY}-short",  # < 16 characters
    }
    failed = subprocess.run(
        [sys.executable, "-m", "consumer", "run"],
        env=bad_env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 2
    startup_error = (failed.stdout + failed.stderr).decode(errors="replace")

    log = log_path.read_text(errors="replace")
    assert "delivery.paused" in log and "record.dead_lettered" in log
    assert '"logger": "librdkafka.producer"' in log  # librdkafka debug lines were logged
    expected_letters = 1 + sum(len(refused_by[v]) for v in VENDORS)
    letters = stage.dead_letters(expected_letters)
    header_text = "\n".join(
        f"{k}={v.decode(errors='replace')}"
        for letter in letters
        for k, v in headers_of(letter).items()
    )
    for where, text in (
        ("log", log),
        ("dead-letter headers", header_text),
        ("start-up error", startup_error),
    ):
        leaked = [c for c in canaries if c.lower() in text.lower()]
        assert leaked == [], f"{where} leaks {leaked}"
    measure(
        "16. canary secrets and personal data",
        stage,
        sandbox,
        orders,
        produced=len(orders) + 2,
        expected_dead_lettered=expected_letters,
    )
