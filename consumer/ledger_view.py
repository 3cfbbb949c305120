"""The command line's read-only view of the ledger (`consumer status`, `consumer rewind`).

Only an existing ledger is opened: a mistyped SQLite path, or a PostgreSQL database without the
schema, is a LedgerError saying so, instead of zeros read from a ledger made on the spot (the
service's own `open_ledger` creates and migrates; this never writes).
"""

from __future__ import annotations

import psycopg

from consumer.errors import LedgerError
from consumer.ledger import Ledger


async def open_existing(url: str) -> Ledger:
    if url.startswith("sqlite:///"):
        from consumer.ledger.sqlite import SqliteLedger

        return SqliteLedger.open(url.removeprefix("sqlite:///"), create=False)
    return await _existing_postgres(url)


async def _existing_postgres(url: str) -> Ledger:
    # The ledger module's own connection set-up (password-free target, timeouts), without the
    # migration `PostgresLedger.open` runs.
    from consumer.ledger.postgres import PostgresLedger, _connect, _prepare

    conninfo, target = _prepare(url)
    connection = await _connect(conninfo, target)
    try:
        cursor = await connection.execute("SELECT to_regclass('deliveries') IS NOT NULL")
        row = await cursor.fetchone()
    except psycopg.Error as exc:
        await connection.close()
        raise LedgerError(f"cannot read the PostgreSQL ledger {target}: {exc}") from exc
    if row is None or not row[0]:
        await connection.close()
        raise LedgerError(
            f"the PostgreSQL ledger {target} has no schema (no deliveries table): check "
            "CONSUMER_LEDGER_URL; the service creates it at its first start (status and "
            "rewind never do)"
        )
    return PostgresLedger(conninfo, target, connection)


async def ledger_figures(url: str) -> dict[str, int]:
    """The ledger's figures; the open window is what a replay cannot vouch for."""
    ledger = await open_existing(url)
    try:
        stats = await ledger.stats()
    finally:
        await ledger.close()
    return {"delivered": stats.delivered, "dead_lettered": stats.dead_lettered,
            "claimed_not_completed": stats.claimed,
            "open_window_taken_over": stats.open_window}  # fmt: skip
