"""SQLite ledger: the embedded default, for one consumer process per ledger file.

One process only (an exclusive lock file enforces it), so claims left by an earlier process
are orphans by definition: on open their leases are expired and the next claim takes them over.
WAL mode with synchronous=NORMAL survives a process crash; a power loss may forget the last
deliveries, which means a re-send, never a lost order.
"""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from consumer.errors import LedgerError
from consumer.ledger import ClaimRequest, LedgerStats, State
from consumer.ledger.rules import Row, decide

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    destination   TEXT NOT NULL,
    order_number  TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('claimed', 'delivered', 'dead_lettered')),
    payload_hash  TEXT,
    owner         TEXT,
    lease_until   REAL NOT NULL DEFAULT 0,
    claims        INTEGER NOT NULL DEFAULT 0,
    taken_over    INTEGER NOT NULL DEFAULT 0,
    claimed_at    REAL,
    completed_at  REAL,
    reason        TEXT,
    PRIMARY KEY (destination, order_number)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_open ON deliveries (state) WHERE state = 'claimed';
"""
CHUNK = 500  # keeps IN (...) lists well under SQLite's variable limit


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


class SqliteLedger:
    def __init__(self, db: sqlite3.Connection, lock: IO[bytes] | None) -> None:
        self._db = db
        self._lock = lock

    @classmethod
    def open(cls, path: str, *, exclusive: bool = True, create: bool = True) -> SqliteLedger:
        """Open (creating the file, its directory and the schema if need be) and lock the ledger.

        `create=False` is for the CLI (`status`, `rewind`): an existing ledger only, opened
        without the lock and without writing anything; a missing file or table is a
        LedgerError, so a mistyped path is reported instead of answered with zeros.
        """
        file = Path(path)
        if not create:
            if not file.is_file():
                raise LedgerError(
                    f"the SQLite ledger {path} does not exist: check CONSUMER_LEDGER_URL "
                    "(status and rewind never create a ledger)"
                )
            try:
                db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=rw", uri=True,
                                     isolation_level=None, check_same_thread=False)  # fmt: skip
                db.execute("PRAGMA busy_timeout=5000")
                table = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'"
                ).fetchone()
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot open SQLite ledger {path}: {exc}") from exc
            if table is None:
                db.close()
                raise LedgerError(f"{path} is not a ledger (it has no deliveries table)")
            return cls(db, None)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            lock = (file.parent / (file.name + ".lock")).open("wb") if exclusive else None
        except OSError as exc:
            raise LedgerError(f"cannot create the SQLite ledger {path}: {exc.strerror}") from exc
        if lock is not None:
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
            db.executescript(SCHEMA)
            if exclusive:
                db.execute("UPDATE deliveries SET lease_until = 0 WHERE state = 'claimed'")
        except sqlite3.Error as exc:
            if lock is not None:
                lock.close()
            raise LedgerError(f"cannot open SQLite ledger {path}: {exc}") from exc
        return cls(db, lock)

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
        now = time.time()
        result: dict[str, State] = {}
        writes: list[tuple[object, ...]] = []
        try:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._rows(destination, [r.order_number for r in requests])
            for request in requests:
                state, taken_over = decide(
                    rows.get(request.order_number),
                    request.payload_hash,
                    owner=owner,
                    now=now,
                    resend_changed=resend_changed,
                    force=force,
                )
                result[request.order_number] = state
                if state is State.CLAIMED:
                    writes.append(
                        (destination, request.order_number, request.payload_hash, owner,
                         now + lease_s, int(taken_over), now)
                    )  # fmt: skip
            self._db.executemany(
                """INSERT INTO deliveries (destination, order_number, state, payload_hash, owner,
                       lease_until, claims, taken_over, claimed_at)
                   VALUES (?, ?, 'claimed', ?, ?, ?, 1, ?, ?)
                   ON CONFLICT (destination, order_number) DO UPDATE SET
                       state = 'claimed', payload_hash = excluded.payload_hash,
                       owner = excluded.owner, lease_until = excluded.lease_until,
                       claims = claims + 1, taken_over = taken_over + excluded.taken_over,
                       claimed_at = excluded.claimed_at""",
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
                f"SELECT order_number, state, payload_hash, owner, lease_until FROM deliveries "  # noqa: S608
                f"WHERE destination = ? AND order_number IN ({marks})",
                (destination, *chunk),
            )
            for number, state, payload_hash, row_owner, lease_until in cursor:
                rows[number] = Row(state, payload_hash, row_owner, lease_until)
        return rows

    async def mark_delivered(
        self, destination: str, requests: Sequence[ClaimRequest], *, owner: str
    ) -> None:
        now = time.time()
        self._write(
            """UPDATE deliveries SET state = 'delivered', payload_hash = ?, completed_at = ?,
                   lease_until = 0, reason = NULL
               WHERE destination = ? AND order_number = ?""",
            [(r.payload_hash, now, destination, r.order_number) for r in requests],
        )

    async def mark_dead_lettered(
        self, destination: str, order_number: str, reason: str, *, owner: str
    ) -> None:
        self._write(
            """INSERT INTO deliveries (destination, order_number, state, owner, completed_at,
                   reason) VALUES (?, ?, 'dead_lettered', ?, ?, ?)
               ON CONFLICT (destination, order_number) DO UPDATE SET state = 'dead_lettered',
                   completed_at = excluded.completed_at, reason = excluded.reason,
                   lease_until = 0""",
            [(destination, order_number, owner, time.time(), reason)],
        )

    async def release(self, destination: str, order_numbers: Sequence[str], *, owner: str) -> None:
        self._write(
            """DELETE FROM deliveries WHERE destination = ? AND order_number = ?
               AND state = 'claimed' AND owner = ? AND taken_over = 0 AND claims = 1""",
            [(destination, n, owner) for n in order_numbers],
        )
        # A re-claimed row keeps its history; only its lease is given back.
        self._write(
            """UPDATE deliveries SET lease_until = 0 WHERE destination = ? AND order_number = ?
               AND state = 'claimed' AND owner = ?""",
            [(destination, n, owner) for n in order_numbers],
        )

    async def states(self, destination: str, order_numbers: Sequence[str]) -> dict[str, State]:
        rows = self._rows(destination, order_numbers)
        return {n: State(r.state) for n, r in rows.items() if r.state != State.CLAIMED.value}

    async def stats(self) -> LedgerStats:
        counts = dict(
            self._db.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall()
        )
        (taken_over,) = self._db.execute(
            "SELECT coalesce(sum(taken_over), 0) FROM deliveries"
        ).fetchone()
        return LedgerStats(
            delivered=counts.get("delivered", 0),
            dead_lettered=counts.get("dead_lettered", 0),
            claimed=counts.get("claimed", 0),
            taken_over=int(taken_over),
        )

    async def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.close()

    def _write(self, sql: str, params: list[tuple[object, ...]]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(sql, params)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise LedgerError(f"ledger write failed: {exc}") from exc

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
