"""Process-level chaos: real consumer OS processes killed, stopped, terminated and multiplied,
and a broker restarted under them. Each scenario ends with its figures line (`measure`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from consumer.devenv.kafka import LocalKafka
from consumer.devenv.samples import encode_schemaless, produce, sample_orders
from consumer.sandbox.control import SandboxControl
from consumer.sandbox.settings import SandboxSettings
from tests.integration.chaos.conftest import VENDORS, measure, scaled
from tests.integration.conftest import Stage, wait_until
from tests.integration.expectations import expected_keys

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@dataclass
class Member:
    """One consumer OS process and its JSON log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def partitions(self, destination: str = "nibble") -> set[int]:
        """The partitions one destination's consumer owns now, by its assigned / revoked / lost
        events (each destination has its own group)."""
        owned: set[int] = set()
        for event in self.events():
            if event.get("destination") != destination:
                continue
            name = event.get("event")
            if name == "consumer.assigned":
                owned |= set(event.get("partitions", []))
            elif name in ("consumer.revoked", "consumer.lost"):
                owned -= set(event.get("partitions", []))
        return owned

    def signal(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait; the exit code."""
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@dataclass
class Members:
    """Every process a test started; whatever is left is SIGKILLed at the end."""

    stage: Stage
    started: list[Member] = field(default_factory=list)

    def spawn(self, name: str, *, idle_exit_s: float | None = None, **env: str) -> Member:
        log = self.stage.tmp / f"{name}-{len(self.started)}.log"
        process = self.stage.spawn(log_path=log, idle_exit_s=idle_exit_s, **env)
        member = Member(name, process, log)
        self.started.append(member)
        return member

    def cleanup(self) -> None:
        for member in self.started:
            if member.process.poll() is None:
                member.process.send_signal(signal.SIGCONT)  # a stopped one dies too
                member.process.kill()
            member.process.wait(timeout=30)


@pytest.fixture
def members(stage: Stage) -> Iterator[Members]:
    group = Members(stage)
    try:
        yield group
    finally:
        group.cleanup()


@pytest.fixture
def wide_stage(
    bootstrap: str, sandbox_url: str, sandbox_settings: SandboxSettings, tmp_path: Path
) -> Callable[[int], Stage]:
    """A Stage with more partitions than the default, for several members to share."""
    return lambda partitions: Stage(
        bootstrap, sandbox_url, sandbox_settings, tmp_path, partitions=partitions
    )


def produce_more(stage: Stage, count: int, *, start: int) -> list[dict[str, Any]]:
    """Orders numbered from `start`: no order number or platform order id repeats earlier ones."""
    orders = sample_orders(count, seed=start + 1, prefix=f"T{stage.name[:4]}", start=start)
    produce(stage.bootstrap, stage.topic, orders,
            encode=lambda r: encode_schemaless(r, stage.schema))  # fmt: skip
    return orders


def delivered_count(sandbox: SandboxControl, vendor: str) -> int:
    return len({r["key"] for r in sandbox.records(vendor)})


def requests_made(sandbox: SandboxControl) -> dict[str, int]:
    return {v: int(sandbox.stats()[v]["requests"]) for v in VENDORS}


def caught_up(stage: Stage) -> bool:
    return stage.committed() == stage.end_offsets()


def all_delivered(sandbox: SandboxControl, orders: list[dict[str, Any]]) -> bool:
    expected = expected_keys(orders)
    return all(expected[v] <= {r["key"] for r in sandbox.records(v)} for v in VENDORS)


# 1. -----------------------------------------------------------------------------------------
def test_a_consumer_killed_mid_batch_again_and_again_loses_no_order(
    stage: Stage, sandbox: SandboxControl, members: Members
) -> None:
    kills = 3
    batch, concurrency = 10, 2
    small_batches = {
        "CONSUMER_NIBBLE_BATCH_SIZE": str(batch),
        "CONSUMER_NUDGIFY_BATCH_SIZE": str(batch),
        "CONSUMER_CUSTOBAR_BATCH_SIZE": str(batch),
        "CONSUMER_CONCURRENT_REQUESTS": str(concurrency),
        # A killed member leaves the group only when its session times out: keep that short.
        "CONSUMER_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "CONSUMER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
    }
    for vendor in VENDORS:
        sandbox.set_faults(vendor, latency_ms=200)
    orders = stage.produce_orders(scaled(300))
    wanted = len(expected_keys(orders)["nibble"])
    for kill in range(1, kills + 1):
        member = members.spawn(f"killed-{kill}", **small_batches)
        threshold = wanted * kill // (kills + 1)
        assert wait_until(lambda t=threshold: delivered_count(sandbox, "nibble") >= t, timeout_s=40)
        member.kill()  # SIGKILL: in the middle of batches in flight to every vendor
    sandbox.clear_faults()
    last = members.spawn("survivor", idle_exit_s=2, **small_batches)
    assert last.process.wait(timeout=60) == 0
    assert caught_up(stage)
    # A kill between a vendor's 2xx and the ledger write repeats at most the batches in flight.
    in_flight_orders = len(VENDORS) * concurrency * batch
    measure("1. SIGKILL mid-batch, 3 times", stage, sandbox, orders,
            allowed_duplicates=kills * in_flight_orders)  # fmt: skip


# 2. -----------------------------------------------------------------------------------------
def test_members_joining_and_leaving_while_orders_arrive_deliver_everything_once(
    wide_stage: Callable[[int], Stage], sandbox: SandboxControl, shared_ledger_url: str
) -> None:
    stage = wide_stage(6)
    group = Members(stage)
    env = {
        "CONSUMER_LEDGER_URL": shared_ledger_url,
        "CONSUMER_SHUTDOWN_GRACE_S": "5",
    }
    sandbox.set_faults("nibble", latency_ms=50)
    orders: list[dict[str, Any]] = []
    chunk = scaled(60)

    def more(i: int) -> None:
        orders.extend(produce_more(stage, chunk, start=i * chunk))

    try:
        live = [group.spawn(f"member-{i}", **env) for i in range(3)]
        more(0)
        steps = ["join", "leave", "join", "leave", "join", "leave", "leave"]
        for i, step in enumerate(steps, start=1):
            time.sleep(1.5)
            if step == "join":
                live.append(group.spawn(f"member-{len(group.started)}", **env))
            else:
                assert live.pop(0).stop() == 0  # graceful leave: drain, commit, exit 0
            more(i)
        assert live, "someone must stay to finish"
        assert wait_until(lambda: caught_up(stage), timeout_s=60, interval_s=0.5)
        assert [m.stop() for m in live] == [0] * len(live)
    finally:
        group.cleanup()
    measure("2. rebalance storm (6 partitions, shared ledger)", stage, sandbox, orders)


# 3. -----------------------------------------------------------------------------------------
def test_a_broker_restart_while_consuming_loses_and_repeats_nothing(
    sandbox_url: str, sandbox_settings: SandboxSettings, sandbox: SandboxControl, tmp_path: Path
) -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("restarts its own local broker; an external cluster is not ours to restart")
    sandbox.set_faults("nibble", latency_ms=1000)  # keeps the consumer busy across the restart
    with LocalKafka() as broker:
        stage = Stage(broker.bootstrap_servers, sandbox_url, sandbox_settings, tmp_path)
        group = Members(stage)
        try:
            orders = produce_more(stage, scaled(200), start=0)
            member = group.spawn("consumer", CONSUMER_NIBBLE_BATCH_SIZE="10")
            assert wait_until(lambda: delivered_count(sandbox, "nibble") > 0, timeout_s=40)
            assert not all_delivered(sandbox, orders)
            broker.restart()  # same port, same data; the consumer reconnects on its own
            orders += produce_more(stage, scaled(100), start=scaled(200))
            assert wait_until(lambda: caught_up(stage), timeout_s=60, interval_s=0.5)
            assert member.stop() == 0
        finally:
            group.cleanup()
        measure("3. broker restart", stage, sandbox, orders)


# 9. -----------------------------------------------------------------------------------------
def test_a_vendor_slower_than_max_poll_interval_does_not_cost_the_group_membership(
    stage: Stage, sandbox: SandboxControl, members: Members
) -> None:
    # The broker's group.min.session.timeout.ms is 6000 and librdkafka wants
    # max.poll.interval.ms >= session.timeout.ms: 6 s each, and every request takes 8 s.
    sandbox.set_faults("custobar", latency_ms=8000)
    orders = stage.produce_orders(scaled(200))
    member = members.spawn(
        "patient",
        CONSUMER_KAFKA__MAX_POLL_INTERVAL_MS="6000",
        CONSUMER_KAFKA__SESSION_TIMEOUT_MS="6000",
        CONSUMER_KAFKA__HEARTBEAT_INTERVAL_MS="1000",
        CONSUMER_HTTP_TIMEOUT_S="20",
    )
    assert wait_until(lambda: caught_up(stage), timeout_s=50, interval_s=0.5)
    events = member.events()  # before SIGTERM: shutdown revokes on purpose
    names = [e.get("event") for e in events]
    assigned = [e.get("destination") for e in events if e.get("event") == "consumer.assigned"]
    assert sorted(assigned) == sorted(VENDORS), names  # once per destination, never again
    assert "consumer.revoked" not in names and "consumer.lost" not in names, names
    assert "max.poll" not in member.log.read_text(), "left the group for a slow poll"
    assert min(sandbox.request_sizes("custobar")) > 0
    assert member.stop() == 0
    measure("9. vendor slower than max.poll.interval.ms", stage, sandbox, orders)


# 10. ----------------------------------------------------------------------------------------
def test_replaying_the_whole_topic_after_delivery_sends_no_request(
    stage: Stage, sandbox: SandboxControl, members: Members
) -> None:
    orders = stage.produce_orders(scaled(200))
    first = members.spawn("first", idle_exit_s=2)
    assert first.process.wait(timeout=60) == 0
    assert caught_up(stage)
    before = requests_made(sandbox)
    replay_group = f"{stage.group}-replay"
    replay = members.spawn("replay", idle_exit_s=2, CONSUMER_GROUP_ID=replay_group)
    assert replay.process.wait(timeout=60) == 0
    assert requests_made(sandbox) == before, "a replay sent requests to a vendor"
    for vendor in VENDORS:
        assert stage.group_committed(f"{replay_group}-{vendor}") == stage.end_offsets()
    summary = replay.named("consumer.summary")[-1]["outcomes"]
    assert summary["nibble"].get("delivered", 0) == 0
    assert summary["nibble"]["duplicate"] == len(expected_keys(orders)["nibble"])
    measure("10. replay from offset 0", stage, sandbox, orders)


# 11. ----------------------------------------------------------------------------------------
def test_sigterm_under_heavy_load_exits_within_the_grace_period_and_repeats_nothing(
    stage: Stage, sandbox: SandboxControl, members: Members
) -> None:
    grace_s = 5.0
    sandbox.set_faults("nibble", latency_ms=1500)
    sandbox.set_faults("custobar", latency_ms=700)
    orders = stage.produce_orders(scaled(400))
    env = {"CONSUMER_SHUTDOWN_GRACE_S": str(grace_s), "CONSUMER_NIBBLE_BATCH_SIZE": "10"}
    loaded = members.spawn("loaded", **env)
    assert wait_until(lambda: delivered_count(sandbox, "nibble") > 0, timeout_s=40)
    started = time.monotonic()
    assert loaded.stop(timeout_s=grace_s + 20) == 0
    took = time.monotonic() - started
    assert took < grace_s + 3, f"took {took:.1f}s to stop"
    assert not all_delivered(sandbox, orders), "the load was not heavy enough to test a drain"
    sandbox.clear_faults()
    restarted = members.spawn("restarted", idle_exit_s=2, **env)
    assert restarted.process.wait(timeout=60) == 0
    assert caught_up(stage)
    measure(f"11. SIGTERM under load (stopped in {took:.1f}s)", stage, sandbox, orders)


# 14. ----------------------------------------------------------------------------------------
def test_a_stalled_member_is_replaced_and_on_waking_neither_resends_nor_commits_stale_offsets(
    wide_stage: Callable[[int], Stage], sandbox: SandboxControl, shared_ledger_url: str
) -> None:
    stage = wide_stage(4)
    everything = set(range(stage.partitions))
    env = {
        "CONSUMER_LEDGER_URL": shared_ledger_url,
        "CONSUMER_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "CONSUMER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        # Longer than the stall: a response that waited in the socket is not taken for a timeout.
        "CONSUMER_HTTP_TIMEOUT_S": "60",
        "CONSUMER_NIBBLE_BATCH_SIZE": "10",
    }
    group = Members(stage)
    try:
        stalled = group.spawn("stalled", **env)
        assert wait_until(lambda: stalled.partitions() == everything, timeout_s=30)
        other = group.spawn("other", **env)
        assert wait_until(lambda: len(other.partitions()) == 2, timeout_s=30)
        assert wait_until(lambda: len(stalled.partitions()) == 2, timeout_s=30)
        sandbox.set_faults("nibble", latency_ms=1000)
        orders = stage.produce_orders(scaled(300))
        assert wait_until(lambda: sandbox.stats()["nibble"]["accepted_requests"] >= 2, timeout_s=30)
        stalled.signal(signal.SIGSTOP)  # with nibble requests in flight
        assert wait_until(lambda: other.partitions() == everything, timeout_s=30)
        # The other member finishes all it can; orders the stalled one claimed stay its own.
        assert wait_until(lambda: all_delivered(sandbox, orders), timeout_s=60, interval_s=0.5)
        stalled.signal(signal.SIGCONT)
        assert wait_until(lambda: caught_up(stage), timeout_s=40, interval_s=0.5)
        end = stage.end_offsets()
        deadline = time.monotonic() + 8  # the woken member finds out it was replaced
        while time.monotonic() < deadline:
            assert stage.committed() == end, "a stale offset was committed"
            time.sleep(0.5)
        assert stalled.stop() == 0 and other.stop() == 0
        assert stage.committed() == end
    finally:
        group.cleanup()
    measure("14. stalled member (SIGSTOP/SIGCONT)", stage, sandbox, orders)
