"""The claim rule, shared by every ledger backend so they cannot disagree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from consumer.ledger import ClaimRequest, State


@dataclass(frozen=True, slots=True)
class Row:
    payload_hash: str | None  # what the vendor holds; None: nothing delivered yet
    source_topic: str | None  # the event that payload came from
    source_partition: int | None
    source_offset: int | None
    source_timestamp: int | None
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
        if is_older(request, row):
            return State.STALE, False
        if row.payload_hash == request.payload_hash:
            return State.DELIVERED, False
        if not resend_changed:
            return State.KEPT, False
    if dead_lettered:
        return State.DEAD_LETTERED, False
    return State.CLAIMED, foreign


def is_older(request: ClaimRequest, row: Row) -> bool:
    """Is the request's event older than the one whose payload the vendor holds? Within one
    partition of one topic the offsets say; across partitions or topics (an order re-keyed,
    partitions added, a new topic) only the records' timestamps can, and an equal or unknown
    timestamp is not older: when in doubt the event is judged on its payload."""
    if request.offset < 0 or row.source_offset is None:
        return False
    if request.topic == row.source_topic and request.partition == row.source_partition:
        return request.offset < row.source_offset
    return 0 <= request.timestamp < (row.source_timestamp if row.source_timestamp else -1)


def split_older(
    requests: Iterable[ClaimRequest], rows: Mapping[str, Row]
) -> tuple[list[ClaimRequest], list[str]]:
    """A delivery's requests: those to record as what the vendor holds, and the order numbers
    whose event is older than what it holds already (a late acknowledgement: only the claim
    ends)."""
    held: list[ClaimRequest] = []
    older: list[str] = []
    for request in requests:
        row = rows.get(request.order_number)
        if row is not None and is_older(request, row):
            older.append(request.order_number)
        else:
            held.append(request)
    return held, older


def storable(text: str) -> str:
    """Text every backend's columns can hold: PostgreSQL refuses NUL in text, so no backend
    stores one (a vendor's message quoted in a dead-letter reason may carry it)."""
    return text.replace("\x00", "")
