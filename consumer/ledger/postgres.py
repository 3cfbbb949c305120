"""PostgreSQL ledger: one database shared by every instance of a consumer group.

Claims are race-free across instances: new orders are inserted with `ON CONFLICT DO NOTHING`,
existing rows are locked `FOR UPDATE` and judged by `rules.decide`, and the claim is written in
the same transaction. Every statement that locks several rows locks them in one order (byte
order of the order number), so two instances never deadlock on overlapping batches. Leases use
the database's clock, so instances with skewed clocks agree on when a lease has expired.

Unlike SQLite, opening never expires anyone's leases: other live instances hold them. A crashed
instance's claims are taken over once their leases run out (and counted as `taken_over`).

One connection, used by one coroutine at a time (an asyncio.Lock); each call is one short
transaction. A connection that broke is replaced on the next call, so the caller's retry of a
`LedgerError` is all that is needed to ride out a database restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow

from consumer.errors import LedgerError
from consumer.ledger import ClaimRequest, LedgerStats, State
from consumer.ledger.rules import Row, decide

Connection = psycopg.AsyncConnection[TupleRow]

# Ordered, append-only: version N is MIGRATIONS[N - 1]. Never edit a released one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE deliveries (
               destination   text NOT NULL,
               order_number  text NOT NULL,
               state         text NOT NULL
                             CHECK (state IN ('claimed', 'delivered', 'dead_lettered')),
               payload_hash  text,
               owner         text,
               lease_until   timestamptz NOT NULL DEFAULT 'epoch',
               claims        integer NOT NULL DEFAULT 0,
               taken_over    integer NOT NULL DEFAULT 0,
               claimed_at    timestamptz,
               completed_at  timestamptz,
               reason        text,
               PRIMARY KEY (destination, order_number)
           )""",
        # Open claims (in flight or orphaned): the open-window figures and their expiry.
        """CREATE INDEX deliveries_claimed ON deliveries (destination, lease_until)
           WHERE state = 'claimed'""",
    ),
)
MIGRATION_LOCK = 0x6F72_6465_726C_6467  # any constant: every instance takes the same lock
# A peer frozen mid-transaction must not stall everyone: give up waiting on its row locks (the
# caller retries), and have the server end its idle transaction (and free its locks).
LOCK_TIMEOUT = "10s"
IDLE_IN_TRANSACTION_TIMEOUT = "30s"
CLAIM_ROUNDS = 5  # a row released between our insert and our lock is inserted again


class PostgresLedger:
    def __init__(self, conninfo: str, target: str, connection: Connection) -> None:
        self._conninfo = conninfo
        self._target = target  # the URL without its password, for messages
        self._conn: Connection | None = connection
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str) -> PostgresLedger:
        """Connect and bring the schema up to date (safe when several instances start at once)."""
        conninfo, target = _prepare(url)
        connection = await _connect(conninfo, target)
        try:
            await migrate(connection)
        except psycopg.Error as exc:
            await connection.close()
            raise LedgerError(f"cannot migrate the PostgreSQL ledger {target}: {exc}") from exc
        except BaseException:
            await connection.close()
            raise
        return cls(conninfo, target, connection)

    async def claim(
        self,
        destination: str,
        requests: Sequence[ClaimRequest],
        *,
        owner: str,
        lease_s: float,
        resend_changed: bool = False,
        force: bool = False,
    ) -> dict[str, State]:
        wanted = {r.order_number: r.payload_hash for r in requests}  # the last hash wins
        pending = sorted(wanted)
        result: dict[str, State] = {}
        async with self._transaction("claim") as conn:
            for _ in range(CLAIM_ROUNDS):
                if not pending:
                    return result
                cursor = await conn.execute(
                    """INSERT INTO deliveries (destination, order_number, state, payload_hash,
                            owner, lease_until, claims, claimed_at)
                        SELECT %s, t.number, 'claimed', t.hash, %s,
                               clock_timestamp() + make_interval(secs => %s), 1, clock_timestamp()
                        FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(number, hash, i)
                        ORDER BY t.i
                        ON CONFLICT (destination, order_number) DO NOTHING
                        RETURNING order_number""",
                    (destination, owner, lease_s, pending, [wanted[n] for n in pending]),
                )
                inserted = {number for (number,) in await cursor.fetchall()}
                result.update(dict.fromkeys(inserted, State.CLAIMED))
                existing = [n for n in pending if n not in inserted]
                rows, now = await self._lock_rows(conn, destination, existing)
                writes: list[tuple[str, str, int]] = []
                for number, row in rows.items():
                    state, taken_over = decide(
                        row, wanted[number], owner=owner, now=now,
                        resend_changed=resend_changed, force=force,
                    )  # fmt: skip
                    result[number] = state
                    if state is State.CLAIMED:
                        writes.append((number, wanted[number], int(taken_over)))
                await self._write_claims(conn, destination, writes, owner, now, lease_s)
                pending = [n for n in existing if n not in rows]
            if pending:
                raise LedgerError(f"claim did not settle for {len(pending)} orders: retry")
        return result

    async def _lock_rows(
        self, conn: Connection, destination: str, numbers: Sequence[str]
    ) -> tuple[dict[str, Row], float]:
        """Lock the rows (one global order), then read the clock: waiting counts as time."""
        rows: dict[str, Row] = {}
        if numbers:
            cursor = await conn.execute(
                """SELECT order_number, state, payload_hash, owner,
                           extract(epoch FROM lease_until)::float8
                    FROM deliveries WHERE destination = %s AND order_number = ANY(%s)
                    ORDER BY order_number COLLATE "C" FOR UPDATE""",
                (destination, list(numbers)),
            )
            for number, state, payload_hash, row_owner, lease_until in await cursor.fetchall():
                rows[number] = Row(state, payload_hash, row_owner, lease_until)
        cursor = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        clock = await cursor.fetchone()
        assert clock is not None  # a SELECT of one value yields one row
        return rows, float(clock[0])

    @staticmethod
    async def _write_claims(
        conn: Connection,
        destination: str,
        writes: Sequence[tuple[str, str, int]],
        owner: str,
        now: float,
        lease_s: float,
    ) -> None:
        if not writes:
            return
        numbers = [number for number, _, _ in writes]
        hashes = [payload_hash for _, payload_hash, _ in writes]
        taken = [taken_over for _, _, taken_over in writes]
        await conn.execute(
            """UPDATE deliveries AS d SET state = 'claimed', payload_hash = t.hash, owner = %s,
                   lease_until = to_timestamp(%s), claims = d.claims + 1,
                   taken_over = d.taken_over + t.taken, claimed_at = to_timestamp(%s)
               FROM unnest(%s::text[], %s::text[], %s::int[]) AS t(number, hash, taken)
               WHERE d.destination = %s AND d.order_number = t.number""",
            (owner, now + lease_s, now, numbers, hashes, taken, destination),
        )

    async def mark_delivered(
        self, destination: str, requests: Sequence[ClaimRequest], *, owner: str
    ) -> None:
        hashes = {r.order_number: r.payload_hash for r in requests}
        numbers = sorted(hashes)
        async with self._transaction("mark delivered") as conn:
            await self._lock_rows(conn, destination, numbers)
            await conn.execute(
                """UPDATE deliveries AS d SET state = 'delivered', payload_hash = t.hash,
                       completed_at = clock_timestamp(), lease_until = 'epoch', reason = NULL
                   FROM unnest(%s::text[], %s::text[]) AS t(number, hash)
                   WHERE d.destination = %s AND d.order_number = t.number""",
                (numbers, [hashes[n] for n in numbers], destination),
            )

    async def mark_dead_lettered(
        self, destination: str, order_number: str, reason: str, *, owner: str
    ) -> None:
        async with self._transaction("mark dead-lettered") as conn:
            await conn.execute(
                """INSERT INTO deliveries (destination, order_number, state, owner,
                       completed_at, reason)
                   VALUES (%s, %s, 'dead_lettered', %s, clock_timestamp(), %s)
                   ON CONFLICT (destination, order_number) DO UPDATE SET
                       state = 'dead_lettered', completed_at = excluded.completed_at,
                       reason = excluded.reason, lease_until = 'epoch'""",
                (destination, order_number, owner, reason),
            )

    async def release(self, destination: str, order_numbers: Sequence[str], *, owner: str) -> None:
        numbers = sorted(set(order_numbers))
        async with self._transaction("release") as conn:
            await self._lock_rows(conn, destination, numbers)
            await conn.execute(
                """DELETE FROM deliveries WHERE destination = %s AND order_number = ANY(%s)
                   AND state = 'claimed' AND owner = %s AND taken_over = 0 AND claims = 1""",
                (destination, numbers, owner),
            )
            # A re-claimed row keeps its history; only its lease is given back.
            await conn.execute(
                """UPDATE deliveries SET lease_until = 'epoch'
                   WHERE destination = %s AND order_number = ANY(%s)
                   AND state = 'claimed' AND owner = %s""",
                (destination, numbers, owner),
            )

    async def states(self, destination: str, order_numbers: Sequence[str]) -> dict[str, State]:
        async with self._transaction("read states") as conn:
            cursor = await conn.execute(
                """SELECT order_number, state FROM deliveries
                   WHERE destination = %s AND order_number = ANY(%s) AND state <> 'claimed'""",
                (destination, list(order_numbers)),
            )
            return {number: State(state) for number, state in await cursor.fetchall()}

    async def stats(self) -> LedgerStats:
        async with self._transaction("read stats") as conn:
            cursor = await conn.execute(
                """SELECT count(*) FILTER (WHERE state = 'delivered'),
                          count(*) FILTER (WHERE state = 'dead_lettered'),
                          count(*) FILTER (WHERE state = 'claimed'),
                          coalesce(sum(taken_over), 0)
                   FROM deliveries"""
            )
            row = await cursor.fetchone()
        assert row is not None  # an aggregate always yields one row
        delivered, dead_lettered, claimed, taken_over = (int(v) for v in row)
        return LedgerStats(delivered=delivered, dead_lettered=dead_lettered, claimed=claimed,
                           taken_over=taken_over)  # fmt: skip

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[Connection]:
        async with self._lock:
            try:
                conn = await self._connection()
                async with conn.transaction():
                    yield conn
            except psycopg.Error as exc:
                raise LedgerError(f"ledger {what} failed on {self._target}: {exc}") from exc

    async def _connection(self) -> Connection:
        """The connection, replaced when it broke or was left mid-transaction (cancelled)."""
        conn = self._conn
        if conn is not None:
            if not conn.broken and conn.info.transaction_status is TransactionStatus.IDLE:
                return conn
            await conn.close()
            self._conn = None
        self._conn = await _connect(self._conninfo, self._target)
        return self._conn


async def migrate(conn: Connection) -> int:
    """Apply the migrations this database lacks, under a lock every instance takes; the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_version (
                   version     integer PRIMARY KEY,
                   applied_at  timestamptz NOT NULL DEFAULT now()
               )"""
        )
        cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
        row = await cursor.fetchone()
        current = int(row[0]) if row else 0
        if current > len(MIGRATIONS):
            raise LedgerError(
                f"the ledger schema is at version {current}, newer than this consumer knows "
                f"({len(MIGRATIONS)}): upgrade the consumer"
            )
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return len(MIGRATIONS)


def _prepare(url: str) -> tuple[str, str]:
    """The conninfo to connect with (with our defaults) and a description without password."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        # libpq quotes the malformed text, which may hold the password: do not chain it.
        raise LedgerError(
            "the PostgreSQL ledger URL is malformed (not shown: it may hold a password)"
        ) from None
    conninfo = make_conninfo(
        url,
        connect_timeout=params.get("connect_timeout", 10),
        application_name=params.get("application_name", "order-consumer"),
    )
    target = "postgresql://{}@{}:{}/{}".format(
        *(params.get(key) or "" for key in ("user", "host", "port", "dbname"))
    )
    return conninfo, target


async def _connect(conninfo: str, target: str) -> Connection:
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise LedgerError(f"cannot connect to the PostgreSQL ledger {target}: {exc}") from exc
    try:
        await conn.execute(
            """SELECT set_config('lock_timeout', %s, false),
                      set_config('idle_in_transaction_session_timeout', %s, false)""",
            (LOCK_TIMEOUT, IDLE_IN_TRANSACTION_TIMEOUT),
        )
    except psycopg.Error as exc:
        await conn.close()
        raise LedgerError(f"cannot set up the PostgreSQL ledger session {target}: {exc}") from exc
    return conn
