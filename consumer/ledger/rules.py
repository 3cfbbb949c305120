"""The claim rule, shared by every ledger backend so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass

from consumer.ledger import ClaimRequest, State


@dataclass(frozen=True, slots=True)
class Row:
    payload_hash: str | None  # what the vendor holds; None: nothing delivered yet
    source_partition: int | None
    source_offset: int | None
    claim_owner: str | None
    claim_until: float


def decide(
    row: Row | None,
    request: ClaimRequest,
    *,
    dead_lettered: bool,
    owner: str,
    now: float,
    resend_changed: bool,
    force: bool,
) -> tuple[State, bool]:
    """What a claim on this row yields: (state, taken_over).

    `State.CLAIMED` means the caller must write the claim and may send. In order:
    1. a live claim of another owner is waited on (BUSY);
    2. `force` (--resend) claims whatever the vendor holds;
    3. the vendor holds the payload of a later event of the same partition: STALE (a replay of
       an older event never rolls the vendor back);
    4. the vendor holds this payload: DELIVERED; it holds another one and takes no updates:
       KEPT;
    5. this payload was dead-lettered before: DEAD_LETTERED (a replay does not repeat it);
    6. otherwise CLAIMED: a new order, a changed one for an updating vendor, or a corrected
       one after a rejection.
    An expired claim of another owner that we take over is the open window (it may have been
    sent): `taken_over` is True then.
    """
    if row is None:
        return (State.DEAD_LETTERED if dead_lettered and not force else State.CLAIMED), False
    foreign = row.claim_owner is not None and row.claim_owner != owner
    if foreign and row.claim_until > now:
        return State.BUSY, False
    if force:
        return State.CLAIMED, foreign
    if row.payload_hash is not None:
        if is_older(request, row.source_partition, row.source_offset):
            return State.STALE, False
        if row.payload_hash == request.payload_hash:
            return State.DELIVERED, False
        if not resend_changed:
            return State.KEPT, False
    if dead_lettered:
        return State.DEAD_LETTERED, False
    return State.CLAIMED, foreign


def is_older(request: ClaimRequest, partition: int | None, offset: int | None) -> bool:
    """Is the request's event older than the event at (partition, offset)? Only events of the
    same partition are comparable (an order's events share its key's partition); a payload
    from an older event never replaces a newer one."""
    return (
        request.offset >= 0
        and offset is not None
        and partition == request.partition
        and request.offset < offset
    )
