"""PostgreSQL ledger: one database shared by every instance of a consumer group.

Claims are race-free across instances: new orders are inserted with `ON CONFLICT DO NOTHING`,
existing rows are locked `FOR UPDATE` and judged by `rules.decide`, and the claim is written in
the same transaction. Every statement that locks several rows locks them in one order (byte
order of the order number), so two instances never deadlock on overlapping batches. Leases use
the database's clock, so instances with skewed clocks agree on when a lease has expired.

Unlike SQLite, opening never expires anyone's leases: other live instances hold them. A crashed
instance's claims are taken over once their leases run out (and counted as `taken_over`).

A small pool of connections (`POOL_SIZE`), one per call in progress; each call is one short
transaction. A connection that broke is dropped and replaced on the next call, so the caller's
retry of a `LedgerError` is all that is needed to ride out a database restart.

A batch's arrays go out in binary (`%b`): psycopg's text dumper quotes every element in Python,
118 µs for a 50-order batch's three arrays where the binary one takes 22.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq import PipelineStatus, TransactionStatus
from psycopg.rows import TupleRow

from consumer.errors import LedgerError
from consumer.ledger import ANY_PAYLOAD, ClaimRequest, DestinationStats, LedgerStats, State
from consumer.ledger.rules import Row, decide, split_older, storable

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
    (
        # What the vendor holds (and from which event) apart from who is sending right now;
        # dead letters apart, keyed by payload, so a corrected event is still sent.
        "ALTER TABLE deliveries RENAME TO deliveries_v1",
        "ALTER INDEX deliveries_claimed RENAME TO deliveries_v1_claimed",
        """CREATE TABLE deliveries (
               destination       text NOT NULL,
               order_number      text NOT NULL,
               payload_hash      text,
               source_topic      text,
               source_partition  integer,
               source_offset     bigint,
               source_timestamp  bigint,
               delivered_at      timestamptz,
               claim_owner       text,
               claim_until       timestamptz NOT NULL DEFAULT 'epoch',
               claimed_at        timestamptz,
               claims            integer NOT NULL DEFAULT 0,
               taken_over        integer NOT NULL DEFAULT 0,
               PRIMARY KEY (destination, order_number)
           )""",
        """CREATE INDEX deliveries_claimed ON deliveries (claim_owner)
           WHERE claim_owner IS NOT NULL""",
        """CREATE TABLE dead_letters (
               destination   text NOT NULL,
               key           text NOT NULL,
               payload_hash  text NOT NULL,
               state         text NOT NULL DEFAULT 'written'
                             CHECK (state IN ('writing', 'written')),
               reason        text,
               owner         text,
               claim_until   timestamptz NOT NULL DEFAULT 'epoch',
               at            timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (destination, key, payload_hash)
           )""",
        """INSERT INTO deliveries (destination, order_number, payload_hash, delivered_at,
                                  claim_owner, claim_until, claimed_at, claims, taken_over)
           SELECT destination, order_number,
                  CASE WHEN state = 'delivered' THEN payload_hash END, completed_at,
                  CASE WHEN state = 'claimed' THEN owner END, lease_until, claimed_at, claims,
                  taken_over
           FROM deliveries_v1 WHERE state IN ('delivered', 'claimed')""",
        """INSERT INTO dead_letters (destination, key, payload_hash, reason, owner, at)
           SELECT destination, order_number, '*', reason, owner, coalesce(completed_at, now())
           FROM deliveries_v1 WHERE state = 'dead_lettered'""",
        "DROP TABLE deliveries_v1",
    ),
)
MIGRATION_LOCK = 0x6F72_6465_726C_6467  # any constant: every instance takes the same lock
# A peer frozen mid-transaction must not stall everyone: give up waiting on its row locks (the
# caller retries), and have the server end its idle transaction (and free its locks).
LOCK_TIMEOUT = "10s"
IDLE_IN_TRANSACTION_TIMEOUT = "30s"
CLAIM_ROUNDS = 5  # a row released between our insert and our lock is inserted again
POOL_SIZE = 12  # connections per process, opened as needed: 3 lanes x 4 requests in flight


class PostgresLedger:
    def __init__(self, conninfo: str, target: str, connection: Connection) -> None:
        self._conninfo = conninfo
        self._target = target  # the URL without its password, for messages
        self._idle: list[Connection] = [connection]
        self._slots = asyncio.Semaphore(POOL_SIZE)
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, url: str, *, create: bool = True) -> PostgresLedger:
        """Connect and bring the schema up to date (safe when several instances start at once).
        `create=False` (status, rewind): never create or migrate; a missing schema is an error."""
        conninfo, target = _prepare(url)
        connection = await _connect(conninfo, target)
        try:
            if create:
                await migrate(connection)
            else:
                await _check_version(connection, target)
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
        wanted = {r.order_number: r for r in requests}  # the last request of an order wins
        pending = sorted(wanted)
        result: dict[str, State] = {}
        async with self._transaction("claim") as conn:
            refused = await self._dead_lettered(
                conn, destination, [(n, r.payload_hash) for n, r in wanted.items()]
            )
            for _ in range(CLAIM_ROUNDS):
                if not pending:
                    return result
                fresh = [n for n in pending if force or (n, wanted[n].payload_hash) not in refused]
                cursor = await conn.execute(
                    """INSERT INTO deliveries (destination, order_number, claim_owner,
                            claim_until, claims, claimed_at)
                        SELECT %s, t.number, %s,
                               clock_timestamp() + make_interval(secs => %s), 1, clock_timestamp()
                        FROM unnest(%b::text[]) WITH ORDINALITY AS t(number, i)
                        ORDER BY t.i
                        ON CONFLICT (destination, order_number) DO NOTHING
                        RETURNING order_number""",
                    (destination, owner, lease_s, fresh),
                )
                inserted = {number for (number,) in await cursor.fetchall()}
                result.update(dict.fromkeys(inserted, State.CLAIMED))
                existing = [n for n in pending if n not in inserted]
                rows, now = await self._lock_rows(conn, destination, existing)
                writes: list[tuple[str, int]] = []
                vanished: list[str] = []
                for number in existing:
                    request, row = wanted[number], rows.get(number)
                    refused_here = (number, request.payload_hash) in refused
                    if row is None and (force or not refused_here):
                        vanished.append(number)  # released between our insert and our lock
                        continue
                    state, taken_over = decide(
                        row, request, dead_lettered=refused_here, owner=owner, now=now,
                        resend_changed=resend_changed, force=force,
                    )  # fmt: skip
                    result[number] = state
                    if state is State.CLAIMED:
                        writes.append((number, int(taken_over)))
                await self._write_claims(conn, destination, writes, owner, now, lease_s)
                pending = vanished
            if pending:
                raise LedgerError(f"claim did not settle for {len(pending)} orders: retry")
        return result

    async def _lock_rows(
        self, conn: Connection, destination: str, numbers: Sequence[str]
    ) -> tuple[dict[str, Row], float]:
        """Lock the rows (one global order), then read the clock: waiting counts as time. Both
        statements go out together (the server runs them in order): one round trip."""
        locked = await self._lock(conn, destination, numbers)
        clock_cursor = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        rows = await self._locked_rows(locked)
        clock = await clock_cursor.fetchone()
        assert clock is not None  # a SELECT of one value yields one row
        return rows, float(clock[0])

    @staticmethod
    async def _lock(
        conn: Connection, destination: str, numbers: Sequence[str]
    ) -> psycopg.AsyncCursor[TupleRow] | None:
        if not numbers:
            return None
        return await conn.execute(
            """SELECT order_number, payload_hash, source_topic, source_partition,
                       source_offset, source_timestamp, claim_owner,
                       extract(epoch FROM claim_until)::float8
                FROM deliveries WHERE destination = %s AND order_number = ANY(%b)
                ORDER BY order_number COLLATE "C" FOR UPDATE""",
            (destination, list(numbers)),
        )

    async def _read_locked(
        self, conn: Connection, destination: str, numbers: Sequence[str]
    ) -> dict[str, Row]:
        """Lock the rows and read them (where no clock is needed)."""
        return await self._locked_rows(await self._lock(conn, destination, numbers))

    @staticmethod
    async def _locked_rows(cursor: psycopg.AsyncCursor[TupleRow] | None) -> dict[str, Row]:
        if cursor is None:
            return {}
        return {number: Row(*values) for number, *values in await cursor.fetchall()}

    @staticmethod
    async def _dead_lettered(
        conn: Connection, destination: str, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        if not keys:
            return set()
        cursor = await conn.execute(
            """SELECT key, payload_hash FROM dead_letters
               WHERE destination = %s AND state = 'written' AND key = ANY(%b)""",
            (destination, sorted({key for key, _ in keys})),
        )
        found = {(key, payload_hash) for key, payload_hash in await cursor.fetchall()}
        covered = {key for key, payload_hash in found if payload_hash == ANY_PAYLOAD}
        return {(key, h) for key, h in keys if (key, h) in found or key in covered}

    @staticmethod
    async def _write_claims(
        conn: Connection,
        destination: str,
        writes: Sequence[tuple[str, int]],
        owner: str,
        now: float,
        lease_s: float,
    ) -> None:
        if not writes:
            return
        await conn.execute(
            """UPDATE deliveries AS d SET claim_owner = %s, claim_until = to_timestamp(%s),
                   claims = d.claims + (d.claim_owner IS DISTINCT FROM %s)::int,
                   claimed_at = CASE WHEN d.claim_owner IS NOT DISTINCT FROM %s
                                     THEN d.claimed_at ELSE to_timestamp(%s) END,
                   taken_over = d.taken_over + t.taken
               FROM unnest(%b::text[], %b::int[]) AS t(number, taken)
               WHERE d.destination = %s AND d.order_number = t.number""",
            (owner, now + lease_s, owner, owner, now, [n for n, _ in writes],
             [t for _, t in writes], destination),
        )  # fmt: skip

    async def mark_delivered(
        self, destination: str, requests: Sequence[ClaimRequest], *, owner: str
    ) -> None:
        latest = {r.order_number: r for r in requests}
        numbers = sorted(latest)
        async with self._transaction("mark delivered") as conn:
            rows = await self._read_locked(conn, destination, numbers)
            held, older = split_older((latest[n] for n in numbers), rows)
            if held:
                # The delivery and the release of our claim in one write of each row (half the
                # row versions of writing then releasing).
                await conn.execute(
                    """INSERT INTO deliveries AS d (destination, order_number, payload_hash,
                           source_topic, source_partition, source_offset, source_timestamp,
                           delivered_at)
                       SELECT %(d)s, t.number, t.hash, t.topic, t.part, t.off, t.ts,
                              clock_timestamp()
                       FROM unnest(%(n)b::text[], %(h)b::text[], %(t)b::text[], %(p)b::int[],
                                   %(o)b::bigint[], %(s)b::bigint[])
                            AS t(number, hash, topic, part, off, ts)
                       ON CONFLICT (destination, order_number) DO UPDATE SET
                           payload_hash = excluded.payload_hash,
                           source_topic = excluded.source_topic,
                           source_partition = excluded.source_partition,
                           source_offset = excluded.source_offset,
                           source_timestamp = excluded.source_timestamp,
                           delivered_at = excluded.delivered_at,
                           claim_owner = CASE WHEN d.claim_owner = %(w)s THEN NULL
                                              ELSE d.claim_owner END,
                           claim_until = CASE WHEN d.claim_owner = %(w)s THEN 'epoch'
                                              ELSE d.claim_until END,
                           claimed_at = CASE WHEN d.claim_owner = %(w)s THEN NULL
                                             ELSE d.claimed_at END""",
                    {"d": destination, "n": [r.order_number for r in held],
                     "h": [r.payload_hash for r in held], "t": [r.topic for r in held],
                     "p": [r.partition for r in held], "o": [r.offset for r in held],
                     "s": [r.timestamp for r in held], "w": owner},
                )  # fmt: skip
            if older:
                await self._release(conn, destination, older, owner)

    async def release(self, destination: str, order_numbers: Sequence[str], *, owner: str) -> None:
        numbers = sorted(set(order_numbers))
        async with self._transaction("release") as conn:
            await self._read_locked(conn, destination, numbers)
            await self._release(conn, destination, numbers, owner)

    @staticmethod
    async def _release(
        conn: Connection, destination: str, numbers: Sequence[str], owner: str
    ) -> None:
        # A row that holds nothing and has no history is as good as absent.
        # `IS NOT DISTINCT FROM` is `=` for an owner (never NULL) that no index can serve: the
        # rows are found by primary key. With `=`, a planner short of statistics chose the
        # claim index, whose dead entries (every release leaves one) it then walked: a mark
        # took 4 ms at 5,000 orders and 28 ms at 30,000.
        await conn.execute(
            """DELETE FROM deliveries WHERE destination = %s AND order_number = ANY(%b)
               AND claim_owner IS NOT DISTINCT FROM %s AND payload_hash IS NULL
               AND taken_over = 0""",
            (destination, list(numbers), owner),
        )
        await conn.execute(
            """UPDATE deliveries SET claim_owner = NULL, claim_until = 'epoch', claimed_at = NULL
               WHERE destination = %s AND order_number = ANY(%b)
               AND claim_owner IS NOT DISTINCT FROM %s""",
            (destination, list(numbers), owner),
        )

    async def release_owner(self, owner: str) -> int:
        async with self._transaction("release claims") as conn:
            cursor = await conn.execute(
                """SELECT destination, order_number FROM deliveries WHERE claim_owner = %s
                   ORDER BY order_number COLLATE "C" FOR UPDATE""",
                (owner,),
            )
            claimed = await cursor.fetchall()
            by_destination: dict[str, list[str]] = {}
            for destination, number in claimed:
                by_destination.setdefault(destination, []).append(number)
            for destination, numbers in by_destination.items():
                await self._release(conn, destination, numbers, owner)
        return len(claimed)

    async def claim_dead_letter(
        self, destination: str, key: str, payload_hash: str, *, owner: str, lease_s: float
    ) -> State:
        async with self._transaction("claim dead letter") as conn:
            if await self._dead_lettered(conn, destination, [(key, payload_hash)]):
                return State.DEAD_LETTERED
            await conn.execute(
                """INSERT INTO dead_letters (destination, key, payload_hash, state, owner,
                       claim_until) VALUES (%s, %s, %s, 'writing', %s, 'epoch')
                   ON CONFLICT (destination, key, payload_hash) DO NOTHING""",
                (destination, key, payload_hash, owner),
            )
            cursor = await conn.execute(
                """SELECT state, owner, claim_until > clock_timestamp() FROM dead_letters
                   WHERE destination = %s AND key = %s AND payload_hash = %s FOR UPDATE""",
                (destination, key, payload_hash),
            )
            row = await cursor.fetchone()
            assert row is not None  # inserted above or there already
            state, row_owner, live = row
            if state == "written":
                return State.DEAD_LETTERED
            if row_owner != owner and live:
                return State.BUSY
            await conn.execute(
                """UPDATE dead_letters SET owner = %s,
                       claim_until = clock_timestamp() + make_interval(secs => %s)
                   WHERE destination = %s AND key = %s AND payload_hash = %s""",
                (owner, lease_s, destination, key, payload_hash),
            )
            return State.CLAIMED

    async def mark_dead_lettered(
        self, destination: str, key: str, payload_hash: str, reason: str, *, owner: str
    ) -> None:
        async with self._transaction("mark dead-lettered") as conn:
            await conn.execute(
                """INSERT INTO dead_letters (destination, key, payload_hash, state, reason,
                       owner) VALUES (%s, %s, %s, 'written', %s, %s)
                   ON CONFLICT (destination, key, payload_hash) DO UPDATE SET
                       state = 'written', reason = excluded.reason, owner = excluded.owner,
                       at = now(), claim_until = 'epoch'""",
                (destination, key, payload_hash, storable(reason), owner),
            )
            await self._read_locked(conn, destination, [key])
            await self._release(conn, destination, [key], owner)

    async def dead_lettered(
        self, destination: str, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        async with self._transaction("read dead letters") as conn:
            return await self._dead_lettered(conn, destination, keys)

    async def stats(self) -> LedgerStats:
        figures: dict[str, dict[str, int]] = {}
        async with self._transaction("read stats") as conn:
            cursor = await conn.execute(
                """SELECT destination, count(payload_hash), count(claim_owner),
                          coalesce(sum(taken_over), 0)
                   FROM deliveries GROUP BY destination"""
            )
            for destination, delivered, claimed, taken_over in await cursor.fetchall():
                figures[destination] = {"delivered": int(delivered), "claimed": int(claimed),
                                        "taken_over": int(taken_over)}  # fmt: skip
            cursor = await conn.execute(
                "SELECT destination, count(*) FROM dead_letters WHERE state = 'written' "
                "GROUP BY destination"
            )
            for destination, dead_lettered in await cursor.fetchall():
                figures.setdefault(destination, {})["dead_lettered"] = int(dead_lettered)
        return LedgerStats({d: DestinationStats(**f) for d, f in sorted(figures.items())})

    async def close(self) -> None:
        for _ in range(POOL_SIZE):  # wait until every transaction in progress is done
            await self._slots.acquire()
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    @asynccontextmanager
    async def _transaction(self, what: str) -> AsyncIterator[Connection]:
        """One short transaction on a pooled connection: the lanes' claims and marks run side
        by side instead of queueing behind one connection. In pipeline mode a statement goes
        out at once and only reading a result waits for the server, so BEGIN, the writes
        nobody reads and COMMIT share round trips (measured: a mark took 7, now 2; a claim
        5-7, now 4). BEGIN and COMMIT are plain statements: psycopg's `transaction()`
        syncs the pipeline on entry and exit. A call that fails or is cancelled leaves its
        transaction open, and such a connection is closed (the server rolls back), not
        reused."""
        async with self._slots:
            conn: Connection | None = None
            try:
                conn = await self._connection()
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    yield conn
                    await conn.execute("COMMIT")
            except psycopg.Error as exc:
                raise LedgerError(f"ledger {what} failed on {self._target}: {exc}") from exc
            finally:
                if conn is not None:
                    self._give_back(conn)

    async def _connection(self) -> Connection:
        """An idle connection of the pool, or a new one."""
        while self._idle:
            conn = self._idle.pop()
            if _reusable(conn):
                return conn
            await conn.close()
        return await _connect(self._conninfo, self._target)

    def _give_back(self, conn: Connection) -> None:
        if _reusable(conn):
            self._idle.append(conn)
        else:
            task = asyncio.get_running_loop().create_task(conn.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


def _reusable(conn: Connection) -> bool:
    """Not broken, not inside a transaction (a failed or cancelled call) and not left in
    pipeline mode (a call cancelled while its pipeline was syncing)."""
    return (
        not conn.broken
        and conn.info.transaction_status is TransactionStatus.IDLE
        and conn.pgconn.pipeline_status == PipelineStatus.OFF
    )


async def _check_version(conn: Connection, target: str) -> None:
    cursor = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cursor.fetchone()
    if not row or not row[0]:
        raise LedgerError(f"no ledger schema in {target}: start the service once to create it")
    cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    row = await cursor.fetchone()
    version = int(row[0]) if row else 0
    if version != len(MIGRATIONS):
        raise LedgerError(
            f"the ledger {target} has schema version {version}, this consumer reads "
            f"{len(MIGRATIONS)}: start the service once to migrate it"
        )


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
        # No server-side prepared statements: a generic plan, made once while the table
        # was small, went on scanning it as it grew (a mark: 4 ms at 5,000 orders, 33 ms at
        # 30,000); planned with the actual arrays, every statement stays on the primary key.
        conn = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, prepare_threshold=None
        )
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
