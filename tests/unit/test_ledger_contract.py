"""The ledger contract, run against every backend: the `ledger` fixture is parametrized over
SQLite and PostgreSQL (a real server, a fresh database per test; see conftest.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from consumer.errors import LedgerError
from consumer.ledger import ClaimRequest, State
from consumer.ledger.sqlite import SqliteLedger

A, B = "instance-a", "instance-b"


def req(number: str, payload_hash: str = "h1") -> ClaimRequest:
    return ClaimRequest(number, payload_hash)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_delivered_order_is_never_claimed_again(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        assert await ledger.claim("nibble", [req("1")], owner=A, lease_s=60) == {"1": State.CLAIMED}
        await ledger.mark_delivered("nibble", [req("1")], owner=A)
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
        stats = await ledger.stats()
        assert stats.open_window == 1  # A may have sent it: counted as the open window
        assert stats.claimed == 1

    run(scenario())


def test_claiming_again_renews_the_own_lease(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await ledger.claim("nibble", [req("9")], owner=A, lease_s=0.2)
        await asyncio.sleep(0.1)
        await ledger.claim("nibble", [req("9")], owner=A, lease_s=60)
        await asyncio.sleep(0.15)
        assert await ledger.claim("nibble", [req("9")], owner=B, lease_s=60) == {"9": State.BUSY}

    run(scenario())


def test_a_changed_payload_is_claimed_again_only_where_resends_are_updates(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await ledger.claim("custobar", [req("5", "old")], owner=A, lease_s=60)
        await ledger.mark_delivered("custobar", [req("5", "old")], owner=A)
        same = await ledger.claim("custobar", [req("5", "old")], owner=A, lease_s=60,
                                  resend_changed=True)  # fmt: skip
        assert same == {"5": State.DELIVERED}
        changed = await ledger.claim("custobar", [req("5", "new")], owner=A, lease_s=60,
                                     resend_changed=True)  # fmt: skip
        assert changed == {"5": State.CLAIMED}
        unchanged_rule = await ledger.claim("nibble", [req("5", "new")], owner=A, lease_s=60)
        assert unchanged_rule == {"5": State.CLAIMED}

    run(scenario())


def test_dead_lettered_orders_are_reported_and_force_reclaims(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        await ledger.claim("nudgify", [req("3")], owner=A, lease_s=60)
        await ledger.release("nudgify", ["3"], owner=A)
        await ledger.mark_dead_lettered("nudgify", "3", "Email is required.", owner=A)
        assert await ledger.states("nudgify", ["3", "4"]) == {"3": State.DEAD_LETTERED}
        assert await ledger.claim("nudgify", [req("3")], owner=A, lease_s=60) == {
            "3": State.DEAD_LETTERED
        }
        assert await ledger.claim("nudgify", [req("3")], owner=A, lease_s=60, force=True) == {
            "3": State.CLAIMED
        }

    run(scenario())


def test_released_claims_leave_no_open_window(ledger) -> None:  # type: ignore[no-untyped-def]
    async def scenario() -> None:
        numbers = [str(n) for n in range(1200)]  # more than one SQL chunk
        claimed = await ledger.claim("nibble", [req(n) for n in numbers], owner=A, lease_s=60)
        assert set(claimed.values()) == {State.CLAIMED}
        await ledger.release("nibble", numbers, owner=A)
        stats = await ledger.stats()
        assert (stats.claimed, stats.delivered, stats.open_window) == (0, 0, 0)

    run(scenario())


def test_sqlite_ledger_refuses_a_second_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "ledger.sqlite3")
    first = SqliteLedger.open(path)
    with pytest.raises(LedgerError, match="in use"):
        SqliteLedger.open(path)
    run(first.close())


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
