"""SQLite ledger: the embedded default, for one consumer process per ledger file.

One process only (an exclusive lock file enforces it), so claims left by an earlier process
are orphans by definition: on open their leases are expired and the next claim takes them over.
WAL mode with synchronous=NORMAL survives a process crash; a power loss may forget the last
deliveries, which means a re-send, never a lost order. `status` and `rewind` open it read-only,
without the lock, and never create it.
"""

from __future__ import annotations

import asyncio
import fcntl
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Concatenate, ParamSpec, TypeVar

from consumer.errors import LedgerError
from consumer.ledger import (
    ANY_PAYLOAD,
    ClaimRequest,
    DestinationStats,
    LedgerStats,
    State,
)
from consumer.ledger.rules import Row, decide, split_older, storable

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    destination       TEXT NOT NULL,
    order_number      TEXT NOT NULL,
    payload_hash      TEXT,              -- what the vendor holds; NULL: nothing yet
    source_topic      TEXT,              -- the event that payload came from
    source_partition  INTEGER,
    source_offset     INTEGER,
    source_timestamp  INTEGER,           -- its record timestamp, ms
    delivered_at      REAL,
    claim_owner       TEXT,
    claim_until       REAL NOT NULL DEFAULT 0,
    claimed_at        REAL,
    claims            INTEGER NOT NULL DEFAULT 0,
    taken_over        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (destination, order_number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_claimed ON deliveries (claim_owner)
    WHERE claim_owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    destination   TEXT NOT NULL,
    key           TEXT NOT NULL,             -- order number, or topic/partition@offset
    payload_hash  TEXT NOT NULL,             -- '*': every payload of the key
    state         TEXT NOT NULL DEFAULT 'written' CHECK (state IN ('writing', 'written')),
    reason        TEXT,
    owner         TEXT,
    claim_until   REAL NOT NULL DEFAULT 0,   -- while 'writing': the writer's lease
    at            REAL,
    PRIMARY KEY (destination, key, payload_hash)
) WITHOUT ROWID;
"""
# The first schema kept one state per order; its rows become the same facts in this one.
MIGRATE_FROM_V1 = """
ALTER TABLE deliveries RENAME TO deliveries_v1;
{schema}
INSERT INTO deliveries (destination, order_number, payload_hash, delivered_at, claim_owner,
                        claim_until, claimed_at, claims, taken_over)
    SELECT destination, order_number,
           CASE WHEN state = 'delivered' THEN payload_hash END, completed_at,
           CASE WHEN state = 'claimed' THEN owner END, 0, claimed_at, claims, taken_over
    FROM deliveries_v1 WHERE state IN ('delivered', 'claimed');
INSERT INTO dead_letters (destination, key, payload_hash, reason, owner, at)
    SELECT destination, order_number, '*', reason, owner, completed_at
    FROM deliveries_v1 WHERE state = 'dead_lettered';
DROP TABLE deliveries_v1;
"""
CHUNK = 400  # keeps IN (...) lists well under SQLite's variable limit


_T = TypeVar("_T")
_R = TypeVar("_R")
_P = ParamSpec("_P")


BUSY_TIMEOUT_MS = 20
MIN_SQLITE = (3, 24, 0)  # upsert (INSERT ... ON CONFLICT DO UPDATE)


def _chunks(items: Sequence[_T]) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _on_loop(
    method: Callable[Concatenate[SqliteLedger, _P], _R],
) -> Callable[Concatenate[SqliteLedger, _P], Coroutine[Any, Any, _R]]:
    """A ledger call, run where it is awaited: on the event loop. With WAL and
    synchronous=NORMAL a commit writes the log without an fsync, and a 50-order claim takes
    0.3-1 ms. A ledger thread was measured worse: it fights the loop for the GIL (every SQLite
    step gives it up), each call took 2-6 ms instead, and the calls of three lanes queued
    behind each other for 25-90 ms (p50), which made the lanes with small batches fall behind."""

    async def run(ledger: SqliteLedger, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return method(ledger, *args, **kwargs)

    run.__doc__ = method.__doc__
    return run


class SqliteLedger:
    def __init__(self, db: sqlite3.Connection, lock: IO[bytes] | None, file: Path) -> None:
        self._db = db
        self._lock = lock
        # Figures count every row: on a large ledger that is no work for the event loop. They
        # are read on a thread, through a connection of their own (WAL: readers never block).
        self._file = file.resolve()
        self._reader: sqlite3.Connection | None = None
        self._reader_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-stats")

    @classmethod
    def open(cls, path: str, *, create: bool = True) -> SqliteLedger:
        """`create=False`: read-only, no lock, and a missing file is an error (status, rewind)."""
        file = Path(path)
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise LedgerError(
                f"the SQLite library this Python links is {sqlite3.sqlite_version}; the ledger "
                f"needs {'.'.join(map(str, MIN_SQLITE))} or newer (or use a PostgreSQL ledger)"
            )
        if not create:
            return cls._open_read_only(file)
        try:
            file.parent.mkdir(exist_ok=True)  # one level: a mistyped path is not built
            lock = (file.parent / (file.name + ".lock")).open("wb")
        except OSError as exc:
            raise LedgerError(f"cannot create the SQLite ledger {path}: {exc.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise LedgerError(
                f"ledger {path} is in use by another process; a SQLite ledger serves one "
                "consumer: use a PostgreSQL ledger to run several"
            ) from None
        try:
            db = sqlite3.connect(file, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            _migrate(db)
            # One process per file: whatever claims are left belong to a process that died.
            db.execute("UPDATE deliveries SET claim_until = 0 WHERE claim_owner IS NOT NULL")
            # From here on calls run on the event loop: a file locked by someone else (an
            # operator's sqlite3 shell, a backup) must not freeze it. A call that finds the
            # file busy fails fast as a LedgerError, which the callers retry with an async
            # backoff.
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            lock.close()
            raise LedgerError(f"cannot open the SQLite ledger {path}: {exc}") from exc
        return cls(db, lock, file)

    @classmethod
    def _open_read_only(cls, file: Path) -> SqliteLedger:
        if not file.is_file():
            raise LedgerError(
                f"the SQLite ledger {file} does not exist: check CONSUMER_LEDGER_URL "
                "(status and rewind never create a ledger)"
            )
        try:
            db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True,
                                 isolation_level=None, check_same_thread=False)  # fmt: skip
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read the SQLite ledger {file}: {exc}") from exc
        if "deliveries" not in tables:
            db.close()
            raise LedgerError(f"{file} is not a ledger (it has no deliveries table)")
        if version != SCHEMA_VERSION:
            db.close()
            raise LedgerError(
                f"the ledger {file} has schema version {version}, this consumer reads "
                f"{SCHEMA_VERSION}: start the service once to migrate it"
            )
        return cls(db, None, file)

    @_on_loop
    def claim(
        self,
        destination: str,
        requests: Sequence[ClaimRequest],
        *,
        owner: str,
        lease_s: float,
        resend_changed: bool = False,
        force: bool = False,
    ) -> dict[str, State]:
        now = time.time()
        result: dict[str, State] = {}
        writes: list[tuple[object, ...]] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._rows(destination, [r.order_number for r in requests])
            refused = self._dead_lettered(
                destination, [(r.order_number, r.payload_hash) for r in requests]
            )
            for request in requests:
                state, taken_over = decide(
                    rows.get(request.order_number),
                    request,
                    dead_lettered=(request.order_number, request.payload_hash) in refused,
                    owner=owner,
                    now=now,
                    resend_changed=resend_changed,
                    force=force,
                )
                result[request.order_number] = state
                if state is State.CLAIMED:
                    writes.append(
                        (destination, request.order_number, owner, now + lease_s, now,
                         int(taken_over))
                    )  # fmt: skip
            self._db.executemany(
                """INSERT INTO deliveries (destination, order_number, claim_owner, claim_until,
                       claimed_at, claims, taken_over)
                   VALUES (?, ?, ?, ?, ?, 1, ?)
                   ON CONFLICT (destination, order_number) DO UPDATE SET
                       claim_owner = excluded.claim_owner, claim_until = excluded.claim_until,
                       claims = claims + (claim_owner IS NOT excluded.claim_owner),
                       claimed_at = CASE WHEN claim_owner IS excluded.claim_owner
                                         THEN claimed_at ELSE excluded.claimed_at END,
                       taken_over = taken_over + excluded.taken_over""",
                writes,
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise LedgerError(f"claim failed: {exc}") from exc
        return result

    def _rows(self, destination: str, order_numbers: Sequence[str]) -> dict[str, Row]:
        rows: dict[str, Row] = {}
        for chunk in _chunks(order_numbers):
            marks = ",".join("?" * len(chunk))
            cursor = self._db.execute(
                "SELECT order_number, payload_hash, source_topic, source_partition, "  # noqa: S608
                "source_offset, source_timestamp, claim_owner, claim_until FROM deliveries "
                f"WHERE destination = ? "
                f"AND order_number IN ({marks})",
                (destination, *chunk),
            )
            for number, *values in cursor:
                rows[number] = Row(*values)
        return rows

    def _dead_lettered(
        self, destination: str, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        found: set[tuple[str, str]] = set()
        wanted = {key for key, _ in keys}
        for chunk in _chunks(sorted(wanted)):
            marks = ",".join("?" * len(chunk))
            cursor = self._db.execute(
                "SELECT key, payload_hash FROM dead_letters "  # noqa: S608
                f"WHERE destination = ? AND state = 'written' AND key IN ({marks})",
                (destination, *chunk),
            )
            found.update(cursor)
        covered = {key for key, payload_hash in found if payload_hash == ANY_PAYLOAD}
        return {(key, h) for key, h in keys if (key, h) in found or key in covered}

    @_on_loop
    def mark_delivered(
        self, destination: str, requests: Sequence[ClaimRequest], *, owner: str
    ) -> None:
        now = time.time()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._rows(destination, [r.order_number for r in requests])
            held, older = split_older(requests, rows)
            # The delivery and the release of our claim in one write of each row: a third of
            # the statements of writing then releasing.
            self._db.executemany(
                """INSERT INTO deliveries (payload_hash, source_topic, source_partition,
                       source_offset, source_timestamp, delivered_at, destination, order_number)
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                   ON CONFLICT (destination, order_number) DO UPDATE SET
                       payload_hash = excluded.payload_hash,
                       source_topic = excluded.source_topic,
                       source_partition = excluded.source_partition,
                       source_offset = excluded.source_offset,
                       source_timestamp = excluded.source_timestamp,
                       delivered_at = excluded.delivered_at,
                       claim_until = CASE WHEN claim_owner IS ?9 THEN 0 ELSE claim_until END,
                       claimed_at = CASE WHEN claim_owner IS ?9 THEN NULL ELSE claimed_at END,
                       claim_owner = CASE WHEN claim_owner IS ?9 THEN NULL
                                          ELSE claim_owner END""",
                [(r.payload_hash, r.topic, r.partition, r.offset, r.timestamp, now, destination,
                  r.order_number, owner) for r in held],
            )  # fmt: skip
            if older:
                self._release(destination, older, owner)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise LedgerError(f"ledger write failed: {exc}") from exc

    @_on_loop
    def release(self, destination: str, order_numbers: Sequence[str], *, owner: str) -> None:
        self._write(lambda: self._release(destination, order_numbers, owner))

    def _release(self, destination: str, order_numbers: Sequence[str], owner: str) -> None:
        params = [(destination, n, owner) for n in order_numbers]
        # A row that holds nothing and has no history is as good as absent.
        self._db.executemany(
            """DELETE FROM deliveries WHERE destination = ? AND order_number = ?
               AND claim_owner = ? AND payload_hash IS NULL AND taken_over = 0""",
            params,
        )
        self._db.executemany(
            """UPDATE deliveries SET claim_owner = NULL, claim_until = 0, claimed_at = NULL
               WHERE destination = ? AND order_number = ? AND claim_owner = ?""",
            params,
        )

    @_on_loop
    def release_owner(self, owner: str) -> int:
        released = 0

        def release_all() -> None:
            nonlocal released
            released += self._db.execute(
                """DELETE FROM deliveries WHERE claim_owner = ? AND payload_hash IS NULL
                   AND taken_over = 0""",
                (owner,),
            ).rowcount
            released += self._db.execute(
                """UPDATE deliveries SET claim_owner = NULL, claim_until = 0, claimed_at = NULL
                   WHERE claim_owner = ?""",
                (owner,),
            ).rowcount

        self._write(release_all)
        return released

    @_on_loop
    def claim_dead_letter(
        self, destination: str, key: str, payload_hash: str, *, owner: str, lease_s: float
    ) -> State:
        now = time.time()
        decided = State.CLAIMED

        def claim() -> None:
            nonlocal decided
            if self._dead_lettered(destination, [(key, payload_hash)]):
                decided = State.DEAD_LETTERED
                return
            row = self._db.execute(
                """SELECT owner, claim_until FROM dead_letters WHERE destination = ? AND key = ?
                   AND payload_hash = ? AND state = 'writing'""",
                (destination, key, payload_hash),
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                decided = State.BUSY
                return
            self._db.execute(
                """INSERT INTO dead_letters (destination, key, payload_hash, state, owner,
                       claim_until) VALUES (?, ?, ?, 'writing', ?, ?)
                   ON CONFLICT (destination, key, payload_hash) DO UPDATE SET
                       owner = excluded.owner, claim_until = excluded.claim_until""",
                (destination, key, payload_hash, owner, now + lease_s),
            )

        self._write(claim)
        return decided

    @_on_loop
    def mark_dead_lettered(
        self, destination: str, key: str, payload_hash: str, reason: str, *, owner: str
    ) -> None:
        def insert() -> None:
            self._db.execute(
                """INSERT INTO dead_letters (destination, key, payload_hash, state, reason,
                       owner, at) VALUES (?, ?, ?, 'written', ?, ?, ?)
                   ON CONFLICT (destination, key, payload_hash) DO UPDATE SET
                       state = 'written', reason = excluded.reason, owner = excluded.owner,
                       at = excluded.at, claim_until = 0""",
                (destination, key, payload_hash, storable(reason), owner, time.time()),
            )
            self._release(destination, [key], owner)

        self._write(insert)

    @_on_loop
    def dead_lettered(
        self, destination: str, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        try:
            return self._dead_lettered(destination, keys)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger read failed: {exc}") from exc

    def _stats(self) -> LedgerStats:
        try:
            db = self._reading()
            db.execute("BEGIN")  # both counts from one snapshot
            figures: dict[str, dict[str, int]] = {}
            for destination, delivered, claimed, taken_over in db.execute(
                """SELECT destination, count(payload_hash), count(claim_owner),
                          coalesce(sum(taken_over), 0)
                   FROM deliveries GROUP BY destination"""
            ):
                figures[destination] = {"delivered": delivered, "claimed": claimed,
                                        "taken_over": int(taken_over)}  # fmt: skip
            for destination, dead_lettered in db.execute(
                "SELECT destination, count(*) FROM dead_letters WHERE state = 'written' "
                "GROUP BY destination"
            ):
                figures.setdefault(destination, {})["dead_lettered"] = dead_lettered
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._reader is not None and self._reader.in_transaction:
                self._reader.execute("ROLLBACK")
            raise LedgerError(f"ledger read failed: {exc}") from exc
        return LedgerStats({d: DestinationStats(**f) for d, f in sorted(figures.items())})

    async def stats(self) -> LedgerStats:
        return await asyncio.get_running_loop().run_in_executor(self._reader_thread, self._stats)

    def _reading(self) -> sqlite3.Connection:
        if self._reader is None:
            self._reader = sqlite3.connect(
                f"{self._file.as_uri()}?mode=ro", uri=True, isolation_level=None
            )
        return self._reader

    async def close(self) -> None:
        def close_reader() -> None:
            if self._reader is not None:
                self._reader.close()

        await asyncio.get_running_loop().run_in_executor(self._reader_thread, close_reader)
        self._reader_thread.shutdown()
        self._db.close()
        if self._lock is not None:
            self._lock.close()

    def _write(self, work: Callable[[], None]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            work()
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise LedgerError(f"ledger write failed: {exc}") from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the file to SCHEMA_VERSION in one transaction (a new file, or the first schema)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"the ledger schema is at version {version}, newer than this consumer knows "
            f"({SCHEMA_VERSION}): upgrade the consumer"
        )
    columns = {row[1] for row in db.execute("PRAGMA table_info(deliveries)")}
    script = MIGRATE_FROM_V1.format(schema=SCHEMA) if "state" in columns else SCHEMA
    db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
