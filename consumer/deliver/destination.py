"""The seam between the pipeline and a vendor: transform an order, send a batch of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from consumer.model import JSON, Order, TransformResult


@dataclass(frozen=True, slots=True)
class Outbound:
    """One order's entries in a vendor request (a sale, a purchase, or a sale's rows)."""

    order_number: str
    items: tuple[JSON, ...]


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
