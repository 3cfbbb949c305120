"""The ledger contract, run against every backend: the `ledger` fixture is parametrized over
SQLite and PostgreSQL (a real server, a fresh database per test; see conftest.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from consumer import config
from consumer.errors import LedgerError
from consumer.ledger import ANY_PAYLOAD, ClaimRequest, State, open_ledger
from consumer.ledger.sqlite import SqliteLedger

A, B = "instance-a", "instance-b"


def req(
    number: str, payload_hash: str = "h1", offset: int = -1, partition: int = 0
) -> ClaimRequest:
    return ClaimRequest(number, payload_hash, partition, offset)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def deliver(ledger, destination: str, request: ClaimRequest, owner: str = A) -> None:  # type: ignore[no-untyped-def]
    claimed = await ledger.claim(destination, [request], owner=owner, lease_s=60,
                                 resend_changed=True)  # fmt: skip
    assert claimed == {request.order_number: State.CLAIMED}
    await ledger.mark_delivered(destination, [request], owner=owner)


def test_a_delivered_order_is_never_claimed_again(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await deliver(ledger, "nibble", req("1"))
        assert await ledger.claim("nibble", [req("1")], owner=B, lease_s=60) == {
            "1": State.DELIVERED
        }
        # The same order for another destination is independent.
        assert await ledger.claim("nudgify", [req("1")], owner=A, lease_s=60) == {
            "1": State.CLAIMED
        }

    run(scenario())


def test_a_live_claim_is_waited_on_and_an_expired_one_is_taken_over(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await ledger.claim("custobar", [req("7")], owner=A, lease_s=0.2)
        assert await ledger.claim("custobar", [req("7")], owner=B, lease_s=60) == {"7": State.BUSY}
        await asyncio.sleep(0.25)
        assert await ledger.claim("custobar", [req("7")], owner=B, lease_s=60) == {
            "7": State.CLAIMED
        }
        total = (await ledger.stats()).total()
        assert total.taken_over == 1  # A may have sent it: counted as the open window
        assert total.claimed == 1

    run(scenario())


def test_claiming_again_renews_the_own_lease(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await ledger.claim("nibble", [req("9")], owner=A, lease_s=0.2)
        await asyncio.sleep(0.1)
        await ledger.claim("nibble", [req("9")], owner=A, lease_s=60)
        await asyncio.sleep(0.15)
        assert await ledger.claim("nibble", [req("9")], owner=B, lease_s=60) == {"9": State.BUSY}

    run(scenario())


def test_a_changed_payload_is_sent_again_only_where_resends_are_updates(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await deliver(ledger, "custobar", req("5", "old", offset=3))
        await deliver(ledger, "nibble", req("5", "old", offset=3))
        same = await ledger.claim("custobar", [req("5", "old", offset=3)], owner=A, lease_s=60,
                                  resend_changed=True)  # fmt: skip
        assert same == {"5": State.DELIVERED}
        changed = await ledger.claim("custobar", [req("5", "new", offset=8)], owner=A,
                                     lease_s=60, resend_changed=True)  # fmt: skip
        assert changed == {"5": State.CLAIMED}
        no_updates = await ledger.claim("nibble", [req("5", "new", offset=8)], owner=A,
                                        lease_s=60)  # fmt: skip
        assert no_updates == {"5": State.KEPT}

    run(scenario())


def test_an_older_event_never_rolls_the_vendor_back(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await deliver(ledger, "custobar", req("5", "cancelled", offset=9))
        older = await ledger.claim("custobar", [req("5", "complete", offset=4)], owner=B,
                                   lease_s=60, resend_changed=True)  # fmt: skip
        assert older == {"5": State.STALE}
        # Another partition's offsets are not comparable (and no timestamps): judged on payload.
        elsewhere = await ledger.claim("custobar", [req("5", "complete", 4, partition=2)],
                                       owner=B, lease_s=60, resend_changed=True)  # fmt: skip
        assert elsewhere == {"5": State.CLAIMED}
        # A late acknowledgement of the older event does not replace what the vendor holds.
        await ledger.mark_delivered("custobar", [req("5", "complete", offset=4)], owner=B)
        again = await ledger.claim("custobar", [req("5", "cancelled", offset=9)], owner=A,
                                   lease_s=60, resend_changed=True)  # fmt: skip
        assert again == {"5": State.DELIVERED}

    run(scenario())


def test_across_partitions_and_topics_the_record_timestamps_decide(ledger) -> None:  # type: ignore[no-untyped-def]
    """An order re-keyed, partitions added, or a new topic: a replay of the older event on
    another partition (or topic) must not roll the vendor back either."""

    def at(hash_: str, topic: str, partition: int, offset: int, ts: int) -> ClaimRequest:
        return ClaimRequest("9", hash_, partition, offset, topic, ts)

    async def scenario() -> None:
        await deliver(ledger, "custobar", at("cancelled", "orders", 1, 3, ts=2_000))
        for older in (at("complete", "orders", 0, 50, ts=1_000),
                      at("complete", "orders.v2", 1, 0, ts=1_000)):  # fmt: skip
            assert await ledger.claim("custobar", [older], owner=B, lease_s=60,
                                      resend_changed=True) == {"9": State.STALE}  # fmt: skip
        newer = at("returned", "orders.v2", 0, 0, ts=3_000)
        assert await ledger.claim("custobar", [newer], owner=B, lease_s=60,
                                  resend_changed=True) == {"9": State.CLAIMED}  # fmt: skip

    run(scenario())


def test_dead_letters_are_kept_per_payload(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await ledger.claim("nudgify", [req("3", "bad")], owner=A, lease_s=60)
        await ledger.mark_dead_lettered("nudgify", "3", "bad", "Email is required.", owner=A)
        assert (await ledger.stats()).total().claimed == 0  # the dead letter ended the claim
        assert await ledger.dead_lettered("nudgify", [("3", "bad"), ("3", "fixed")]) == {
            ("3", "bad")
        }
        assert await ledger.claim("nudgify", [req("3", "bad")], owner=B, lease_s=60) == {
            "3": State.DEAD_LETTERED
        }
        assert await ledger.claim("nudgify", [req("3", "bad")], owner=B, lease_s=60,
                                  force=True) == {"3": State.CLAIMED}  # fmt: skip
        assert await ledger.claim("nudgify", [req("3", "fixed")], owner=B, lease_s=60) == {
            "3": State.CLAIMED
        }

    run(scenario())


def test_a_dead_letter_for_any_payload_covers_every_payload_of_its_key(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await ledger.mark_dead_lettered("*", "orders/1@5", ANY_PAYLOAD, "not Avro", owner=A)
        await ledger.mark_dead_lettered("*", "orders/1@5", ANY_PAYLOAD, "not Avro", owner=B)
        assert await ledger.dead_lettered(
            "*", [("orders/1@5", ANY_PAYLOAD), ("orders/1@6", ANY_PAYLOAD)]
        ) == {("orders/1@5", ANY_PAYLOAD)}
        assert (await ledger.stats()).destinations["*"].dead_lettered == 1

    run(scenario())


def test_released_claims_leave_no_open_window(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        numbers = [str(n) for n in range(1200)]  # more than one SQL chunk
        claimed = await ledger.claim("nibble", [req(n) for n in numbers], owner=A, lease_s=60)
        assert set(claimed.values()) == {State.CLAIMED}
        await ledger.release("nibble", numbers, owner=A)
        total = (await ledger.stats()).total()
        assert (total.claimed, total.delivered, total.taken_over) == (0, 0, 0)

    run(scenario())


def test_marking_a_delivery_releases_our_claim_and_never_anothers(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        mine = [req("1", offset=1), req("2", offset=2)]
        await ledger.claim("custobar", mine, owner=A, lease_s=60, resend_changed=True)
        # B took order 3 over while A was still sending it; A's acknowledgement comes late.
        await ledger.claim("custobar", [req("3", offset=3)], owner=A, lease_s=0.05)
        await asyncio.sleep(0.1)
        await ledger.claim("custobar", [req("3", offset=3)], owner=B, lease_s=60)
        await ledger.mark_delivered("custobar", [*mine, req("3", offset=3)], owner=A)
        total = (await ledger.stats()).total()
        assert (total.delivered, total.claimed) == (3, 1)  # B's claim on 3 is B's to end
        assert await ledger.claim("custobar", [req("3", offset=3)], owner=A, lease_s=60) == {
            "3": State.BUSY
        }
        # A's send of an older event is acknowledged after B delivered a later one: the vendor
        # keeps the later one, and A's claim still ends.
        await ledger.claim("custobar", [req("1", "h5", offset=5)], owner=A, lease_s=60,
                           resend_changed=True)  # fmt: skip
        await ledger.mark_delivered("custobar", [req("1", "h7", offset=7)], owner=B)
        await ledger.mark_delivered("custobar", [req("1", "h5", offset=5)], owner=A)
        total = (await ledger.stats()).total()
        assert (total.delivered, total.claimed) == (3, 1)
        assert await ledger.claim("custobar", [req("1", "h7", offset=7)], owner=B, lease_s=60,
                                  resend_changed=True) == {"1": State.DELIVERED}  # fmt: skip

    run(scenario())


def test_a_clean_stop_releases_every_claim_so_the_next_owner_takes_none_over(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await deliver(ledger, "custobar", req("1", "v1"))
        await ledger.claim("custobar", [req("1", "v2")], owner=A, lease_s=3600,
                           resend_changed=True)  # fmt: skip
        await ledger.claim("nibble", [req(str(n)) for n in range(5)], owner=A, lease_s=3600)
        assert await ledger.release_owner(A) >= 6
        assert await ledger.claim("custobar", [req("1", "v2")], owner=B, lease_s=60,
                                  resend_changed=True) == {"1": State.CLAIMED}  # fmt: skip
        assert await ledger.claim("custobar", [req("1", "v1")], owner=A, lease_s=60,
                                  resend_changed=True) == {"1": State.BUSY}  # fmt: skip
        total = (await ledger.stats()).total()
        assert total.taken_over == 0
        assert total.delivered == 1  # the vendor still holds v1

    run(scenario())


def test_sqlite_ledger_refuses_a_second_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ledger.sqlite3")
    first = SqliteLedger.open(path)
    with pytest.raises(LedgerError, match="in use"):
        SqliteLedger.open(path)
    run(first.close())


def test_sqlite_a_foreign_write_lock_fails_calls_fast_and_they_succeed_once_it_is_gone(
    tmp_path,
) -> None:  # type: ignore[no-untyped-def]
    """Ledger calls run on the event loop: an operator's sqlite3 shell holding the write lock
    must not freeze the service; the callers retry a LedgerError with an async backoff."""
    path = str(tmp_path / "ledger.sqlite3")

    async def scenario() -> None:
        ledger = SqliteLedger.open(path)
        shell = sqlite3.connect(path, isolation_level=None)
        shell.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(LedgerError, match="locked"):
            await ledger.claim("nibble", [req("1")], owner=A, lease_s=60)
        assert time.monotonic() - started < 0.5
        shell.execute("COMMIT")
        shell.close()
        assert await ledger.claim("nibble", [req("1")], owner=A, lease_s=60) == {"1": State.CLAIMED}
        await ledger.close()

    run(scenario())


def test_sqlite_claims_of_a_crashed_process_are_taken_over_on_restart(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ledger.sqlite3")

    async def scenario() -> None:
        crashed = SqliteLedger.open(path)
        await crashed.claim("nibble", [req("1")], owner=A, lease_s=3600)
        await crashed.close()  # as a crash would: the claim is never completed
        started = time.monotonic()
        restarted = SqliteLedger.open(path)
        assert await restarted.claim("nibble", [req("1")], owner=B, lease_s=60) == {
            "1": State.CLAIMED
        }
        assert time.monotonic() - started < 1  # no waiting for the dead owner's lease
        assert (await restarted.stats()).open_window == 1
        await restarted.close()

    run(scenario())


def test_a_restart_with_the_same_host_name_and_pid_still_counts_the_open_window(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A container restarted in its pod keeps its host name, and its process is pid 1 again:
    the claims its predecessor left may have been sent, and must count as the open window."""
    env = {
        "CONSUMER_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "CONSUMER_IDEMPOTENCY_SECRET": "0123456789abcdef-secret",
        "CONSUMER_NIBBLE_API_KEY": "nib-key",
        "CONSUMER_NIBBLE_API_SECRET": "nib-secret-value",
        "CONSUMER_NUDGIFY_ENABLED": "false",
        "CONSUMER_CUSTOBAR_ENABLED": "false",
    }
    before, after = config.load(env).instance_id, config.load(env).instance_id
    path = str(tmp_path / "ledger.sqlite3")

    async def scenario() -> None:
        crashed = SqliteLedger.open(path)
        await crashed.claim("nibble", [req("1")], owner=before, lease_s=3600)
        await crashed.close()
        restarted = SqliteLedger.open(path)
        await restarted.claim("nibble", [req("1")], owner=after, lease_s=60)
        assert (await restarted.stats()).open_window == 1
        await restarted.close()

    run(scenario())


def test_sqlite_older_than_the_ledger_needs_is_refused_by_version(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 22, 0))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.22.0")
    with pytest.raises(LedgerError, match=r"3\.22\.0; the ledger needs 3\.24\.0"):
        SqliteLedger.open(str(tmp_path / "ledger.sqlite3"))
    assert not (tmp_path / "ledger.sqlite3").exists()


def test_status_never_creates_a_ledger(tmp_path) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "typo" / "ledger.sqlite3"
    with pytest.raises(LedgerError, match="does not exist"):
        run(open_ledger(f"sqlite:///{missing}", create=False))
    assert not missing.parent.exists()


def test_status_reads_a_ledger_the_running_service_holds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ledger.sqlite3")

    async def scenario() -> None:
        service = SqliteLedger.open(path)
        await deliver(service, "nibble", req("1"))
        status = await open_ledger(f"sqlite:///{path}", create=False)
        assert (await status.stats()).destinations["nibble"].delivered == 1
        await status.close()
        await service.close()

    run(scenario())


def test_a_first_schema_sqlite_ledger_is_migrated_with_its_facts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "ledger.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE deliveries (destination TEXT NOT NULL, order_number TEXT NOT NULL,
               state TEXT NOT NULL, payload_hash TEXT, owner TEXT, lease_until REAL NOT NULL
               DEFAULT 0, claims INTEGER NOT NULL DEFAULT 0, taken_over INTEGER NOT NULL
               DEFAULT 0, claimed_at REAL, completed_at REAL, reason TEXT,
               PRIMARY KEY (destination, order_number)) WITHOUT ROWID;
           INSERT INTO deliveries VALUES ('nibble', '1', 'delivered', 'h1', 'x', 0, 1, 0, 1, 2,
                                          NULL);
           INSERT INTO deliveries VALUES ('nudgify', '2', 'dead_lettered', NULL, 'x', 0, 0, 0,
                                          NULL, 2, 'Email is required.');
           INSERT INTO deliveries VALUES ('custobar', '3', 'claimed', 'h3', 'x', 9e99, 1, 0, 1,
                                          NULL, NULL);"""
    )
    db.close()

    async def scenario() -> None:
        ledger = SqliteLedger.open(str(path))
        assert await ledger.claim("nibble", [req("1", "h1")], owner=A, lease_s=60) == {
            "1": State.DELIVERED
        }
        assert await ledger.claim("nudgify", [req("2", "any")], owner=A, lease_s=60) == {
            "2": State.DEAD_LETTERED
        }
        assert await ledger.claim("custobar", [req("3", "h3")], owner=A, lease_s=60) == {
            "3": State.CLAIMED  # the old process is gone: its claim is taken over
        }
        assert (await ledger.stats()).open_window == 1
        await ledger.close()

    run(scenario())


def test_one_instance_writes_a_dead_letter_and_the_other_waits_then_skips_it(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        claim = ledger.claim_dead_letter
        assert await claim("*", "orders/2@2", ANY_PAYLOAD, owner=A, lease_s=60) == State.CLAIMED
        assert await claim("*", "orders/2@2", ANY_PAYLOAD, owner=B, lease_s=60) == State.BUSY
        await ledger.mark_dead_lettered("*", "orders/2@2", ANY_PAYLOAD, "not Avro", owner=A)
        assert await claim("*", "orders/2@2", ANY_PAYLOAD, owner=B, lease_s=60) == (
            State.DEAD_LETTERED
        )
        # A writer that died mid-write: its claim expires and another one writes the letter.
        assert await claim("nibble", "7", "h", owner=A, lease_s=0.1) == State.CLAIMED
        assert await ledger.dead_lettered("nibble", [("7", "h")]) == set()
        await asyncio.sleep(0.15)
        assert await claim("nibble", "7", "h", owner=B, lease_s=60) == State.CLAIMED

    run(scenario())
