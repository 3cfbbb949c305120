"""Which offsets may be committed: per partition, the highest *contiguous* completed offset + 1.

Records of one partition finish out of order (batches, retries, slow vendors); the committed
offset must never pass a record that is still in flight, or a crash would lose it.
"""

from __future__ import annotations

import time
from collections import deque


class PartitionProgress:
    """Offsets started and finished on one partition, for one assignment of it.

    A new object is made each time the partition is assigned, so a late completion from a
    previous assignment lands on an orphaned object and cannot move the new one.
    """

    __slots__ = ("_done", "_head_since", "_started", "committable", "revoked", "stored")

    def __init__(self) -> None:
        self._started: deque[int] = deque()
        self._done: set[int] = set()
        self._head_since = 0.0  # when the oldest unfinished record became the oldest
        self.committable: int | None = None  # next offset to commit, once anything finished
        self.stored: int | None = None
        self.revoked = False

    def start(self, offset: int) -> None:
        if not self._started:
            self._head_since = time.monotonic()
        self._started.append(offset)

    def finish(self, offset: int) -> None:
        started, done = self._started, self._done
        if started and offset == started[0] and not done:  # in order: the common case
            started.popleft()
            self.committable = offset + 1
        else:
            done.add(offset)
            if not started or started[0] not in done:
                return  # the oldest record is still out: nothing moves
            while started and started[0] in done:
                head = started.popleft()
                done.discard(head)
                self.committable = head + 1
        self._head_since = time.monotonic()

    def oldest_unfinished(self) -> int | None:
        """The offset of the oldest record fetched and not settled; None: none in flight."""
        return self._started[0] if self._started else None

    def held_for(self, now: float) -> float:
        """How long the oldest unfinished record has held this partition's offset (0: none)."""
        return now - self._head_since if self._started else 0.0

    @property
    def in_flight(self) -> int:
        return len(self._started)

    def unstored(self) -> int | None:
        """The committable offset if it moved since it was last stored."""
        if self.committable is not None and self.committable != self.stored:
            return self.committable
        return None
