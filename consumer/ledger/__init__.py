"""The delivery ledger: (destination, order number) → claimed / delivered / dead-lettered.

It is what makes delivery effectively-once: before a send, the order is *claimed* with a lease
(a claim held by another live instance is waited on; an expired one is taken over); after the
vendor accepts, the row becomes delivered with a hash of what was sent. A claim that never
completed is the one open window (the vendor may have accepted, the ledger does not know); such
rows, and takeovers of them, are counted in `LedgerStats.open_window`.

Two implementations behind one Protocol: `sqlite.py` (embedded default, one consumer process)
and `postgres.py` (shared by a consumer group). `open_ledger(url)` picks one.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class State(enum.Enum):
    CLAIMED = "claimed"  # claimed by us now: go ahead and send
    BUSY = "busy"  # claimed by another live instance: wait, then ask again
    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    order_number: str
    payload_hash: str


@dataclass(frozen=True, slots=True)
class LedgerStats:
    delivered: int
    dead_lettered: int
    claimed: int  # claims not completed yet (in flight, or orphaned by a crash)
    taken_over: int  # claims completed by a later owner: each one may have been sent twice

    @property
    def open_window(self) -> int:
        return self.taken_over


class Ledger(Protocol):
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
        """Claim each order for sending, or report why not.

        `resend_changed`: a delivered order whose payload hash differs is claimed again (for
        vendors where a re-send is an update). `force`: claim even delivered orders (--resend).
        Claiming an order this owner already holds renews its lease.
        """
        ...

    async def mark_delivered(
        self, destination: str, requests: Sequence[ClaimRequest], *, owner: str
    ) -> None: ...

    async def mark_dead_lettered(
        self, destination: str, order_number: str, reason: str, *, owner: str
    ) -> None: ...

    async def release(self, destination: str, order_numbers: Sequence[str], *, owner: str) -> None:
        """Give up claims without having sent (shutdown or revoke before the send)."""
        ...

    async def states(self, destination: str, order_numbers: Sequence[str]) -> dict[str, State]:
        """Completed states only (delivered / dead-lettered); absent keys have none."""
        ...

    async def stats(self) -> LedgerStats: ...

    async def close(self) -> None: ...


async def open_ledger(url: str) -> Ledger:
    if url.startswith("sqlite:///"):
        from consumer.ledger.sqlite import SqliteLedger

        return SqliteLedger.open(url.removeprefix("sqlite:///"))
    from consumer.ledger.postgres import PostgresLedger

    return await PostgresLedger.open(url)
