"""Rules every vendor transform shares: order states, blank text, UTC timestamps.

Place in the flow: helpers of the transform stage; pure, no I/O.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

# Platforms spell states differently ("On-Hold", "canceled", "pending payment"): compare one form.
ENDED_STATES = frozenset({"CANCELLED", "CANCELED", "RETURNED", "REFUNDED", "CLOSED"})
"""The order did not end as a sale: Nibble and Nudgify have no cancel endpoint, so skip it."""


@functools.lru_cache(maxsize=256)  # a platform has a handful of states: normalised once each
def normalise_state(state: str) -> str:
    """Upper case with `-` and spaces as `_`: "On-Hold" and "on hold" both read "ON_HOLD"."""
    return "_".join(state.strip().upper().replace("-", " ").split())


def is_ended(state: str) -> bool:
    """Cancelled, returned, refunded or closed (Magento's state after a full refund)."""
    return normalise_state(state) in ENDED_STATES


def text(value: str | None) -> str | None:
    """The value without surrounding whitespace; None when nothing is left."""
    if value is None:
        return None
    stripped = value.strip()
    return stripped or None


def utc(moment: datetime) -> datetime | None:
    """The moment in UTC, or None when it is naive: guessing a zone would read the host clock."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None
    return moment.astimezone(UTC)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC to the second with a `Z`: "2023-04-21T14:30:00Z"."""
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def sql_utc(moment: datetime) -> str:
    """ "Y-m-d H:i:s" in UTC (PHP's format letters): "2021-04-15 04:29:42"."""
    return moment.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat(sep=" ")
