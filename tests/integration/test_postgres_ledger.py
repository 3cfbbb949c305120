"""The PostgreSQL ledger shared by several instances: what only a shared database can show."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from consumer.devenv.postgres import create_database, drop_database
from consumer.errors import LedgerError
from consumer.ledger import ClaimRequest, State, open_ledger
from consumer.ledger.postgres import MIGRATIONS, PostgresLedger, migrate

pytestmark = pytest.mark.integration
A, B, C = "instance-a", "instance-b", "instance-c"
ORDERS = [f"order-{n:03d}" for n in range(200)]


@pytest.fixture
def url(postgres_url: str) -> Iterator[str]:
    database = f"ledger_it_{uuid.uuid4().hex[:12]}"
    yield create_database(postgres_url, database)
    drop_database(postgres_url, database)


def reqs(numbers: list[str]) -> list[ClaimRequest]:
    return [ClaimRequest(n, "h1") for n in numbers]


async def claim_in_random_batches(
    ledger: PostgresLedger, owner: str, seed: int
) -> dict[str, State]:
    """One instance claiming all orders in its own order and batch sizes, as a rebalance would."""
    rng = random.Random(seed)
    numbers = ORDERS.copy()
    rng.shuffle(numbers)
    result: dict[str, State] = {}
    while numbers:
        size = rng.randint(1, 25)
        batch, numbers = numbers[:size], numbers[size:]
        result |= await ledger.claim("nibble", reqs(batch), owner=owner, lease_s=60)
    return result


def claimed_by(result: dict[str, State]) -> set[str]:
    return {n for n, state in result.items() if state is State.CLAIMED}


@pytest.mark.parametrize("seed", range(5))
def test_two_instances_claiming_the_same_orders_never_both_send_one(url: str, seed: int) -> None:
    async def scenario() -> None:
        a, b = await PostgresLedger.open(url), await PostgresLedger.open(url)
        try:
            got_a, got_b = await asyncio.gather(
                claim_in_random_batches(a, A, seed), claim_in_random_batches(b, B, seed + 100)
            )
            assert claimed_by(got_a).isdisjoint(claimed_by(got_b))
            assert claimed_by(got_a) | claimed_by(got_b) == set(ORDERS)
            assert set(got_a.values()) | set(got_b.values()) <= {State.CLAIMED, State.BUSY}
            stats = await a.stats()
            assert (stats.total().claimed, stats.open_window) == (200, 0)
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_expired_claims_are_taken_over_by_exactly_one_instance(url: str) -> None:
    async def scenario() -> None:
        crashed, a, b = [await PostgresLedger.open(url) for _ in range(3)]
        try:
            await crashed.claim("nibble", reqs(ORDERS), owner=C, lease_s=0.05)
            await crashed.close()
            await asyncio.sleep(0.1)
            got_a, got_b = await asyncio.gather(
                claim_in_random_batches(a, A, 1), claim_in_random_batches(b, B, 2)
            )
            assert claimed_by(got_a).isdisjoint(claimed_by(got_b))
            assert claimed_by(got_a) | claimed_by(got_b) == set(ORDERS)
            assert (await a.stats()).open_window == 200  # each takeover counted once
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_a_starting_instance_leaves_the_live_claims_of_others_alone(url: str) -> None:
    async def scenario() -> None:
        a = await PostgresLedger.open(url)
        await a.claim("nibble", reqs(["1"]), owner=A, lease_s=60)
        b = await open_ledger(url)  # as a second instance starting (or restarting) would
        assert await b.claim("nibble", reqs(["1"]), owner=B, lease_s=60) == {"1": State.BUSY}
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_leases_follow_the_database_clock_not_the_instance_clock(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        a = await PostgresLedger.open(url)
        await a.claim("nibble", reqs(["1"]), owner=A, lease_s=60)
        skewed = time.time() + 3600  # this instance's clock runs an hour fast
        monkeypatch.setattr(time, "time", lambda: skewed)
        assert await a.claim("nibble", reqs(["1"]), owner=B, lease_s=60) == {"1": State.BUSY}
        await a.close()

    asyncio.run(scenario())


def test_instances_starting_together_migrate_the_schema_once(url: str) -> None:
    async def scenario() -> None:
        ledgers = await asyncio.gather(*(PostgresLedger.open(url) for _ in range(6)))
        await ledgers[0].claim("nibble", reqs(["1"]), owner=A, lease_s=60)
        await ledgers[0].mark_delivered("nibble", reqs(["1"]), owner=A)
        for ledger in ledgers:
            await ledger.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            assert await migrate(conn) == len(MIGRATIONS)  # once more: nothing to do
            assert await migrate(conn) == len(MIGRATIONS)
            cursor = await conn.execute("SELECT version FROM schema_version ORDER BY version")
            versions = [v for (v,) in await cursor.fetchall()]
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        reopened = await PostgresLedger.open(url)
        assert await reopened.claim("nibble", reqs(["1"]), owner=B, lease_s=60) == {
            "1": State.DELIVERED  # data kept
        }
        await reopened.close()

    asyncio.run(scenario())


def test_a_first_schema_ledger_is_migrated_with_its_facts(url: str) -> None:
    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, "
                               "applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
            for statement in MIGRATIONS[0]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES (1)")
            await conn.execute(
                """INSERT INTO deliveries (destination, order_number, state, payload_hash, owner,
                       reason) VALUES ('nibble', '1', 'delivered', 'h1', 'x', NULL),
                       ('nudgify', '2', 'dead_lettered', NULL, 'x', 'Email is required.')"""
            )
        ledger = await PostgresLedger.open(url)
        try:
            assert await ledger.claim("nibble", reqs(["1"]), owner=A, lease_s=60) == {
                "1": State.DELIVERED
            }
            assert await ledger.claim("nudgify", reqs(["2"]), owner=A, lease_s=60) == {
                "2": State.DEAD_LETTERED
            }
        finally:
            await ledger.close()

    asyncio.run(scenario())


def test_a_dropped_connection_fails_one_call_and_the_retry_reconnects(url: str) -> None:
    async def scenario() -> None:
        ledger = await PostgresLedger.open(url)
        await ledger.claim("nibble", reqs(["1"]), owner=A, lease_s=60)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'order-consumer' AND datname = current_database()"
            )
        with pytest.raises(LedgerError):
            await ledger.stats()
        assert (await ledger.stats()).total().claimed == 1
        await ledger.close()

    asyncio.run(scenario())


def test_connection_errors_never_show_the_password() -> None:
    async def scenario() -> None:
        with pytest.raises(LedgerError) as caught:
            await PostgresLedger.open("postgresql://consumer:s3cr3t-pw@127.0.0.1:1/ledger")
        assert "s3cr3t-pw" not in str(caught.value)
        assert "s3cr3t-pw" not in str(caught.value.__cause__)
        assert "127.0.0.1:1/ledger" in str(caught.value)
        with pytest.raises(LedgerError) as malformed:
            await PostgresLedger.open("postgresql://consumer:s3cr3t-pw@127.0.0.1:1/ledger?x=1")
        assert "s3cr3t-pw" not in str(malformed.value)
        assert malformed.value.__cause__ is None

    asyncio.run(scenario())
