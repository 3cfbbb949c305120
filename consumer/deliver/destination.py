"""The seam between the pipeline and a vendor: transform an order, send a batch of them.

An order's entries are serialised once, when the record is handed to the worker: the same
bytes are hashed for the ledger and joined into the request body (`json_document`), so what
the ledger vouches for is exactly what was sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from consumer.model import JSON, Order, Payload, TransformResult


@dataclass(frozen=True, slots=True)
class Outbound:
    """One order's entries in a vendor request (a sale, a purchase, or a sale's rows), kept
    only as the bytes sent: a record in flight costs its JSON, not its dictionaries."""

    order_number: str
    encoded: tuple[bytes, ...]  # each entry as compact JSON: the bytes hashed and sent
    digest: str  # the ledger's hash of what is sent for this order

    @classmethod
    def of(cls, order_number: str, payload: Payload) -> Outbound:
        encoded = tuple(orjson.dumps(item) for item in payload.items)
        digest = hashlib.sha256(b"\n".join(encoded)).hexdigest()
        return cls(order_number, encoded, digest)

    @property
    def items(self) -> list[JSON]:
        """The entries as JSON values again (an error's scrubbing needs what was sent)."""
        return [orjson.loads(entry) for entry in self.encoded]


def json_document(head: bytes, batch: Sequence[Outbound], tail: bytes = b"]}") -> bytes:
    """A request body from entries serialised once: `head` opens the document up to its
    array (`b'{"sales":['`), the entries follow comma-separated, `tail` closes it."""
    entries: Iterable[bytes] = (entry for outbound in batch for entry in outbound.encoded)
    return head + b",".join(entries) + tail


class Destination(Protocol):
    name: str
    max_batch: int  # orders per request
    resend_changed: bool  # a changed payload for a delivered order is an update worth sending

    def transform(self, order: Order) -> TransformResult: ...

    async def send(self, batch: Sequence[Outbound], *, idempotency_key: str) -> None:
        """Send one request; raise a DeliveryError subclass unless the vendor accepted it all.

        A `RejectedError.culprits` key is a position in `batch`.
        """
        ...

    async def aclose(self) -> None: ...
