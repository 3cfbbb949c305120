"""The command line's read-only view of the ledger (`consumer status`, `consumer rewind`).

Only an existing ledger is opened (`open_ledger(create=False)`): a mistyped SQLite path, or a
PostgreSQL database without the schema, is a LedgerError saying so, instead of zeros read from a
ledger made on the spot.
"""

from __future__ import annotations

from typing import Any

from consumer.ledger import open_ledger


async def ledger_figures(url: str) -> dict[str, Any]:
    """Per destination: delivered, dead-lettered, claims not completed, and the open window
    (claims taken over after a crash: what a replay cannot vouch for)."""
    ledger = await open_ledger(url, create=False)
    try:
        stats = await ledger.stats()
    finally:
        await ledger.close()
    return {
        "destinations": {
            name: {"delivered": f.delivered, "dead_lettered": f.dead_lettered,
                   "claimed_not_completed": f.claimed, "open_window_taken_over": f.taken_over}
            for name, f in stats.destinations.items()
        },
        "open_window": stats.open_window,
    }  # fmt: skip
