"""Never stuck, never leaking: a bug on some records, vendors having a bad day (a 100 MB error
body, a redirect, an answer that drips, an error that echoes the request), and the shared
PostgreSQL ledger restarted or unreachable for longer than a claim lease.

Each scenario ends with `measure(...)` (nothing lost, dead letters as expected) and, where it
applies, reads the service's own /metrics: stalled partitions 0 at the end."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from consumer.devenv.kafka import free_port
from consumer.devenv.postgres import LocalPostgres
from consumer.devenv.samples import sample_orders
from consumer.sandbox.control import SandboxControl
from tests.integration.chaos.conftest import VENDORS, measure, scaled
from tests.integration.chaos.test_faults import (
    caught_up,
    headers_of,
    produce_raw,
    running,
    schemaless,
    stop,
)
from tests.integration.conftest import Stage, wait_until
from tests.integration.expectations import expected_keys

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def metrics(port: int) -> dict[str, float]:
    """The /metrics samples, `name{labels}` → value (an unreachable endpoint: {})."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=3).text
    except httpx.HTTPError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def stalled(port: int) -> int:
    return int(sum(v for k, v in metrics(port).items()
                   if k.startswith("order_consumer_stalled_partitions")))  # fmt: skip


# 19. ----------------------------------------------------------------------------------------
def test_a_bug_on_some_records_dead_letters_them_as_internal_errors_and_nothing_stalls(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(scaled(60), seed=51)
    cursed = [o["order_number"] for o in orders[5:8]]
    port = free_port()
    env = {"ORDER_CONSUMER_FAIL_ORDERS": ",".join(cursed), "CONSUMER_HEALTH_PORT": str(port),
           "CONSUMER_INTERNAL_ERROR_RETRIES": "2"}  # fmt: skip
    with running(stage, **env):
        assert wait_until(lambda: caught_up(stage), timeout_s=60)
        assert stalled(port) == 0
        errors = {k: v for k, v in metrics(port).items() if "internal_errors_total" in k}
        assert all(v >= 3 for v in errors.values()), errors  # every destination saw them
    letters = stage.dead_letters(3 * len(cursed))
    found = {(h["dlq.destination"].decode(), h["dlq.order_number"].decode())
             for h in map(headers_of, letters)}  # fmt: skip
    assert found == {(v, n) for v in VENDORS for n in cursed}
    assert {headers_of(m)["dlq.error.class"] for m in letters} == {b"internal_error"}
    healthy = [o for o in orders if o["order_number"] not in cursed]
    measure("19. a bug on 3 orders (internal_error), stalled partitions 0", stage, sandbox,
            healthy, produced=len(orders), expected_dead_lettered=3 * len(cursed))  # fmt: skip


# 20. ----------------------------------------------------------------------------------------
def test_a_vendor_answering_100_mb_error_bodies_neither_pins_a_core_nor_ignores_sigterm(
    stage: Stage, sandbox: SandboxControl
) -> None:
    sandbox.set_faults("nibble", huge_body_mb=100, error_status=503)
    orders = stage.produce_orders(scaled(40), seed=52)
    expected = expected_keys(orders)
    with running(stage, CONSUMER_SHUTDOWN_GRACE_S="3") as process:
        assert wait_until(lambda: sandbox.stats()["nibble"]["failed_requests"] >= 3, timeout_s=60)
        assert wait_until(lambda: all(expected[v] <= {r["key"] for r in sandbox.records(v)}
                                      for v in ("nudgify", "custobar")), timeout_s=60)  # fmt: skip
        rss_mb = rss_of(process.pid)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        took = time.monotonic() - started
    assert took < 3 + 5, f"took {took:.1f} s to stop"
    assert rss_mb < 300, f"{rss_mb} MB resident while reading 100 MB answers"
    sandbox.clear_faults()
    stage.run_in_process()
    measure(f"20. 100 MB error bodies (RSS {rss_mb} MB, SIGTERM honoured in {took:.1f} s)",
            stage, sandbox, orders)  # fmt: skip


def rss_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) // 1024 if match else 0


# 21. ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 307])
def test_a_vendor_redirect_pauses_it_and_dead_letters_nothing(
    stage: Stage, sandbox: SandboxControl, status: int
) -> None:
    sandbox.set_faults("custobar", redirect_status=status)
    orders = stage.produce_orders(scaled(40), seed=53)
    expected = expected_keys(orders)
    port = free_port()
    with running(stage, CONSUMER_HEALTH_PORT=str(port)):
        assert wait_until(lambda: all(expected[v] <= {r["key"] for r in sandbox.records(v)}
                                      for v in ("nibble", "nudgify")), timeout_s=60)  # fmt: skip
        assert wait_until(
            lambda: (
                metrics(port).get('order_consumer_destination_paused{destination="custobar"}') == 1
            ),
            timeout_s=20,
        )
        assert sandbox.records("custobar") == []
        assert stage.dead_letters(0, timeout_s=1) == []
        sandbox.clear_faults()
        assert wait_until(lambda: caught_up(stage), timeout_s=60)
    measure(f"21. custobar answers {status} (paused, nothing dead-lettered)", stage, sandbox,
            orders)  # fmt: skip


# 22. ----------------------------------------------------------------------------------------
def test_a_vendor_echoing_the_request_in_its_errors_leaks_no_personal_data(
    stage: Stage, sandbox: SandboxControl, tmp_path: Path
) -> None:
    personal = {
        "email": "echo.canary.buyer@example.org",
        "phone": "+358 40 123 4567",
        "first_name": "Echofirstname",
        "last_name": "Echolastname",
        "ip": "2001:db8::42",
        "id": "CUST-ECHO-77",
    }
    orders = []
    for n, order in enumerate(sample_orders(12, seed=54, prefix=f"E{stage.name[:4]}")):
        customer = {**order["customer"], **personal, "email": f"echo{n}.{personal['email']}"}
        address = {**(order.get("address") or {}), "city": "Echocityville"}
        orders.append({**order, "customer": customer, "address": address,
                       "nibble_session_token": f"echo-session-token-{n}",
                       "state": "COMPLETE"})  # fmt: skip
    sandbox.set_faults("nudgify", echo_request=True)
    produce_raw(stage, schemaless(stage, orders))
    log_path = tmp_path / "echo.log"
    with running(stage, log_path=log_path, CONSUMER_LOG_LEVEL="debug"):
        assert wait_until(lambda: caught_up(stage), timeout_s=60)
    refused = expected_keys(orders)["nudgify"]
    letters = stage.dead_letters(len(refused))
    text = log_path.read_text(errors="replace") + "\n".join(
        f"{k}={v.decode(errors='replace')}" for m in letters for k, v in headers_of(m).items()
    )
    assert "echo" in text.lower() or letters  # the vendor's answers were seen
    secrets = [*personal.values(), "Echocityville", "echo-session-token",
               "echo.canary.buyer", stage.creds.nudgify_site_key]  # fmt: skip
    leaked = [value for value in secrets if value.lower() in text.lower()]
    assert leaked == [], f"leaked {leaked}"
    measure("22. vendor echoes the request in its errors: 0 personal values leaked", stage,
            sandbox, orders, expected_dead_lettered=len(refused),
            refused={"nudgify": refused})  # fmt: skip


# 23. ----------------------------------------------------------------------------------------
def test_a_vendor_that_drips_its_answer_is_timed_out_and_holds_no_slot_for_long(
    stage: Stage, sandbox: SandboxControl
) -> None:
    sandbox.set_faults("nibble", drip_s=1.0)
    orders = stage.produce_orders(scaled(40), seed=55)
    expected = expected_keys(orders)
    with running(stage, CONSUMER_HTTP_TIMEOUT_S="2", CONSUMER_CONCURRENT_REQUESTS="1"):
        assert wait_until(lambda: sandbox.stats()["nibble"]["requests"] >= 4, timeout_s=60)
        started = time.monotonic()
        requests = sandbox.stats()["nibble"]["requests"]
        time.sleep(6)
        # One slot, a 2 s deadline: a request every ~2 s plus backoff, never one per 70 s.
        assert sandbox.stats()["nibble"]["requests"] - requests >= 2
        assert all(expected[v] <= {r["key"] for r in sandbox.records(v)}
                   for v in ("nudgify", "custobar"))  # fmt: skip
        sandbox.clear_faults()
        assert wait_until(lambda: caught_up(stage), timeout_s=60)
        took = time.monotonic() - started
    measure(f"23. nibble drips its answers (deadline 2 s; recovered {took:.0f} s after)",
            stage, sandbox, orders)  # fmt: skip


# 24, 25. ------------------------------------------------------------------------ the ledger
@pytest.fixture
def own_postgres() -> Any:
    if os.environ.get("ORDER_CONSUMER_POSTGRES_URL"):
        pytest.skip("needs a PostgreSQL server this test can stop and start")
    server = LocalPostgres()  # its own directory: the server's OS user may not enter tmp_path
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_the_shared_ledger_restarted_mid_delivery_loses_and_doubles_nothing(
    stage: Stage, sandbox: SandboxControl, own_postgres: LocalPostgres
) -> None:
    sandbox.set_faults("nibble", latency_ms=200)
    orders = stage.produce_orders(scaled(150), seed=56)
    env = {"CONSUMER_LEDGER_URL": own_postgres.url, "CONSUMER_NIBBLE_BATCH_SIZE": "10"}
    with running(stage, **env) as process:
        assert wait_until(lambda: len(sandbox.records("nibble")) >= 20, timeout_s=60)
        own_postgres.stop()
        time.sleep(3)
        own_postgres.start()
        assert wait_until(lambda: caught_up(stage), timeout_s=90)
        assert process.poll() is None  # rode it out without a restart
    measure("24. shared ledger restarted mid-delivery", stage, sandbox, orders)


def test_the_shared_ledger_unreachable_longer_than_a_lease_with_three_consumers(
    stage: Stage, sandbox: SandboxControl, own_postgres: LocalPostgres
) -> None:
    lease_s = 3
    orders = stage.produce_orders(scaled(240), seed=57)
    sandbox.set_faults("custobar", latency_ms=150)
    ports = [free_port() for _ in range(3)]
    env = {"CONSUMER_LEDGER_URL": own_postgres.url, "CONSUMER_CLAIM_LEASE_S": str(lease_s),
           "CONSUMER_HTTP_TIMEOUT_S": str(lease_s / 2),
           "CONSUMER_CUSTOBAR_BATCH_SIZE": "10"}  # fmt: skip
    members = [stage.spawn(CONSUMER_HEALTH_PORT=str(port), **env) for port in ports]
    try:
        assert wait_until(lambda: len(sandbox.records("custobar")) >= 20, timeout_s=60)
        own_postgres.stop()
        deadline = time.monotonic() + 2 * lease_s
        while time.monotonic() < deadline:  # metrics are still served meanwhile
            assert all(metrics(port) for port in ports), "a member stopped serving /metrics"
            time.sleep(0.5)
        own_postgres.start()
        assert wait_until(lambda: caught_up(stage), timeout_s=120)
        assert all(m.poll() is None for m in members)  # recovered without a restart
        open_window = max(metrics(port).get("order_consumer_open_window", 0) for port in ports)
    finally:
        for member in members:
            stop(member)
    measure(f"25. shared ledger unreachable {2 * lease_s} s > lease {lease_s} s, 3 members "
            f"(open window {int(open_window)})", stage, sandbox, orders,
            allowed_duplicates=int(open_window))  # fmt: skip


# 26. ----------------------------------------------------------------------------------------
def test_a_clean_stop_during_a_pause_leaves_no_claim_and_an_unfinished_batch_job_says_so(
    stage: Stage, sandbox: SandboxControl
) -> None:
    import json
    import subprocess
    import sys

    from tests.integration.conftest import ROOT

    sandbox.set_faults("nudgify", reject_auth=True)
    orders = stage.produce_orders(scaled(60), seed=58)
    expected = expected_keys(orders)
    job = stage.spawn(idle_exit_s=30)
    assert wait_until(lambda: all(expected[v] <= {r["key"] for r in sandbox.records(v)}
                                  for v in ("nibble", "custobar")), timeout_s=60)  # fmt: skip
    assert wait_until(lambda: sandbox.stats()["nudgify"]["requests"] >= 2, timeout_s=30)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) == 4  # a batch job stopped before it was done: not 0
    status = subprocess.run([sys.executable, "-m", "consumer", "status"], cwd=ROOT,
                            env=stage.process_env(), capture_output=True, timeout=60)  # fmt: skip
    figures = json.loads(status.stdout)
    nudgify = figures["destinations"].get("nudgify", {})  # no row left: nothing claimed
    assert nudgify.get("claimed_not_completed", 0) == 0
    assert figures["open_window"] == 0  # the vendor took nothing: nothing may count as twice
    sandbox.clear_faults()
    stage.run_in_process()
    after = json.loads(subprocess.run([sys.executable, "-m", "consumer", "status"], cwd=ROOT,
                                      env=stage.process_env(), capture_output=True,
                                      timeout=60).stdout)  # fmt: skip
    assert after["open_window"] == 0
    measure("26. clean stop during a pause (exit 4 for the unfinished job; open window 0)",
            stage, sandbox, orders)  # fmt: skip
