"""The claim rule, shared by every ledger backend so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.ledger import State


@dataclass(frozen=True, slots=True)
class Row:
    state: str
    payload_hash: str | None
    owner: str | None
    lease_until: float


def decide(
    row: Row | None,
    payload_hash: str,
    *,
    owner: str,
    now: float,
    resend_changed: bool,
    force: bool,
) -> tuple[State, bool]:
    """What a claim on this row yields: (state, taken_over).

    `State.CLAIMED` means the caller must write the claim (insert or update) and may send.
    """
    if row is None:
        return State.CLAIMED, False
    if row.state == State.CLAIMED.value:
        if row.owner == owner:
            return State.CLAIMED, False
        if row.lease_until > now:
            return State.BUSY, False
        return State.CLAIMED, True  # the previous owner died mid-send: the open window
    done = State(row.state)
    if force or (resend_changed and row.payload_hash != payload_hash):
        return State.CLAIMED, False
    return done, False
