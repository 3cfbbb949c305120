"""The delivery ledger: per (destination, order number), what the vendor holds, and who is
sending to it right now; plus every dead letter already written.

It is what makes delivery effectively-once *and* keeps each vendor's final state equal to the
stream:
- Before a send, the order is *claimed* with a lease (a claim held by another live instance is
  waited on; an expired one is taken over and counted: the open window).
- After the vendor accepted, the row records the hash of the payload the vendor now holds and
  the position (partition, offset) of the event it came from. A later claim for the same order
  compares: the same payload is already delivered; an event older than the held one is stale;
  a changed payload is sent again only where the vendor updates (Custobar) and is otherwise
  kept (Nibble and Nudgify take no updates).
- Dead letters are keyed by (destination, order number or record coordinates, payload hash),
  so a replay does not repeat one, yet a corrected event of the same order is still sent.

Two implementations behind one Protocol: `sqlite.py` (embedded default, one consumer process)
and `postgres.py` (shared by a consumer group). `open_ledger(url)` picks one; the claim rule
both use is `rules.decide`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

ANY_PAYLOAD = "*"
"""The payload hash of a dead letter that covers every payload of its key (a record that
never became an order; dead letters migrated from the first ledger schema)."""


class State(enum.Enum):
    CLAIMED = "claimed"  # claimed by us now: go ahead and send
    BUSY = "busy"  # claimed by another live instance: wait, then ask again
    DELIVERED = "delivered"  # the vendor holds exactly this payload
    KEPT = "kept"  # the vendor holds an earlier payload of the order and takes no updates
    STALE = "stale"  # the vendor holds the payload of a later event of the order
    DEAD_LETTERED = "dead_lettered"  # this very payload was dead-lettered before


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """An order's payload to claim, and the event it came from (so an older event never
    overwrites a newer one: by offset within a partition, by record timestamp across)."""

    order_number: str
    payload_hash: str
    partition: int = -1
    offset: int = -1
    topic: str = ""
    timestamp: int = -1  # the record's timestamp, ms since the epoch; -1: unknown


@dataclass(frozen=True, slots=True)
class DestinationStats:
    delivered: int = 0  # orders the vendor holds
    dead_lettered: int = 0  # dead letters written (orders or records)
    claimed: int = 0  # claims not completed yet (in flight, or orphaned by a crash)
    taken_over: int = 0  # claims taken over after their lease ran out: maybe sent twice


@dataclass(frozen=True, slots=True)
class LedgerStats:
    destinations: Mapping[str, DestinationStats]

    def total(self) -> DestinationStats:
        rows = self.destinations.values()
        return DestinationStats(
            delivered=sum(r.delivered for r in rows),
            dead_lettered=sum(r.dead_lettered for r in rows),
            claimed=sum(r.claimed for r in rows),
            taken_over=sum(r.taken_over for r in rows),
        )

    @property
    def open_window(self) -> int:
        return self.total().taken_over


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
        """Claim each order for sending, or report why not (see `State`).

        `resend_changed`: a changed payload of a delivered order is claimed again (the vendor
        updates). `force`: claim even delivered orders (`--resend`). Claiming an order this
        owner already holds renews its lease.
        """
        ...

    async def mark_delivered(
        self, destination: str, requests: Sequence[ClaimRequest], *, owner: str
    ) -> None:
        """The vendor accepted these payloads; our claims on them end. A payload from an event
        older than the one already held never replaces it."""
        ...

    async def release(self, destination: str, order_numbers: Sequence[str], *, owner: str) -> None:
        """Give up claims without having delivered (rejected, revoked, shutting down)."""
        ...

    async def release_owner(self, owner: str) -> int:
        """A clean stop: give up every claim this owner still holds; returns how many."""
        ...

    async def claim_dead_letter(
        self, destination: str, key: str, payload_hash: str, *, owner: str, lease_s: float
    ) -> State:
        """Before writing a dead letter: CLAIMED (write it, then `mark_dead_lettered`), BUSY
        (another live instance is writing it: ask again) or DEAD_LETTERED (written before).
        So two instances reading the same record never both write its dead letter."""
        ...

    async def mark_dead_lettered(
        self, destination: str, key: str, payload_hash: str, reason: str, *, owner: str
    ) -> None:
        """The dead letter is written (Kafka acknowledged it); a delivery claim this owner held
        on `key` ends with it."""
        ...

    async def dead_lettered(
        self, destination: str, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which of these (key, payload hash) pairs were dead-lettered already (an
        `ANY_PAYLOAD` dead letter covers every hash of its key)."""
        ...

    async def stats(self) -> LedgerStats: ...

    async def close(self) -> None: ...


async def open_ledger(url: str, *, create: bool = True) -> Ledger:
    """`create=False` (status, rewind): refuse a ledger that does not exist yet."""
    if url.startswith("sqlite:///"):
        from consumer.ledger.sqlite import SqliteLedger

        return SqliteLedger.open(url.removeprefix("sqlite:///"), create=create)
    from consumer.ledger.postgres import PostgresLedger

    return await PostgresLedger.open(url, create=create)
