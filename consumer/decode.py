"""Stage 1 of the flow: Kafka record bytes → a validated `Order` (the only fastavro user).

Two wire formats:
- Confluent: magic byte 0, a 4-byte big-endian schema id, then Avro binary. The writer schema
  is fetched from the Schema Registry once per id and kept parsed.
- Schemaless: plain Avro binary written with a known local schema.
Either way the record is resolved against our reader schema, so a newer or older writer
(fields added with defaults) still decodes. Anything that cannot become an Order raises a
`RecordError`, which the pipeline dead-letters; it never stops the consumer.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro

from consumer.errors import InvalidOrderError, UndecodableError
from consumer.model import Address, Customer, Order, OrderLine
from consumer.registry import SchemaRegistry

__all__ = ["Decoder", "SchemaRegistry", "load_schema", "to_order"]

MAGIC = 0
HEADER = struct.Struct(">bI")
ONE_CENT = Decimal("0.01")


def load_schema(path: Path) -> Any:
    return fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))


class SchemaPending(Exception):
    """The record's writer schema is not fetched yet: await `Decoder.fetch(schema_id)`, then
    decode again. Keeps the common path synchronous (no coroutine per record)."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(schema_id)
        self.schema_id = schema_id


class Decoder:
    def __init__(
        self,
        *,
        reader_schema: Any,
        writer_schema: Any | None = None,
        registry: SchemaRegistry | None = None,
    ) -> None:
        if (writer_schema is None) == (registry is None):
            raise ValueError("give exactly one of writer_schema (schemaless) or registry")
        self._reader = reader_schema
        self._writer = writer_schema
        self._registry = registry
        self._known: dict[int, Any] = {}  # schema id → parsed writer schema
        self._unknown: dict[int, UndecodableError] = {}  # ids the registry does not know

    async def decode(self, value: bytes | None) -> Order:
        while True:
            try:
                return self.decode_now(value)
            except SchemaPending as pending:
                await self.fetch(pending.schema_id)

    async def fetch(self, schema_id: int) -> None:
        """Fetch a writer schema (waits out a registry outage; raises UndecodableError for an
        id the registry does not know)."""
        assert self._registry is not None  # only the Confluent format raises SchemaPending
        try:
            self._known[schema_id] = await self._registry.writer_schema(schema_id)
        except UndecodableError as exc:
            self._unknown[schema_id] = exc  # ids never change: every such record is poison

    @property
    def registry(self) -> SchemaRegistry | None:
        return self._registry

    def decode_now(self, value: bytes | None) -> Order:
        if not value:
            raise UndecodableError("empty record value (tombstone?)")
        if self._registry is not None:
            if len(value) < HEADER.size or value[0] != MAGIC:
                raise UndecodableError("not in Confluent wire format (no magic byte 0)")
            _, schema_id = HEADER.unpack_from(value)
            writer: Any = self._known.get(schema_id)
            if writer is None:
                if (refused := self._unknown.get(schema_id)) is not None:
                    raise UndecodableError(str(refused))
                raise SchemaPending(schema_id)
            body = memoryview(value)[HEADER.size :]
        else:
            writer, body = self._writer, memoryview(value)
        buffer = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(buffer, writer, self._reader)
        except Exception as exc:  # fastavro raises many types on garbage input
            raise UndecodableError(f"Avro decoding failed: {type(exc).__name__}") from exc
        if buffer.tell() != len(body):
            raise UndecodableError("trailing bytes after the Avro record")
        return to_order(record)  # type: ignore[arg-type]


def to_order(record: Mapping[str, Any]) -> Order:
    """Avro record → Order, enforcing the rules every vendor transform relies on."""
    number = (record.get("order_number") or "").strip()
    if not number:
        raise InvalidOrderError("order_number is empty")
    currency = record["currency"]
    if not (
        len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()
    ):
        raise InvalidOrderError(f"currency {currency!r} is not an ISO 4217 code")
    completed_at = record["completed_at"]
    if not isinstance(completed_at, datetime):
        raise InvalidOrderError("completed_at is not a timestamp")
    lines = tuple(_line(i, line) for i, line in enumerate(record["lines"]))
    if not lines:
        raise InvalidOrderError("order has no lines")
    order = Order(
        order_number=number,
        order_id=record.get("order_id"),
        completed_at=completed_at.astimezone(UTC),
        currency=currency,
        exchange_rate=record.get("exchange_rate"),
        customer=Customer(**(record.get("customer") or {})),
        address=Address(**(record.get("address") or {})),
        lines=lines,
        discount=record["discount"],
        shipping=record["shipping"],
        total=record["total"],
        state=record["state"],
        coupon_codes=tuple(record.get("coupon_codes") or ()),
        shop_id=record.get("shop_id"),
        payment_method=record.get("payment_method"),
        shipping_method=record.get("shipping_method"),
        nibble_session_token=record.get("nibble_session_token"),
        cart_nibble_id=record.get("cart_nibble_id"),
        tags=tuple(record.get("tags") or ()),
        custom_fields=dict(record.get("custom_fields") or {}),
    )
    if order.exchange_rate is not None and order.exchange_rate <= 0:
        raise InvalidOrderError("exchange_rate must be positive")
    _within_schema("exchange_rate", order.exchange_rate, RATE_LIMIT)
    for name in ("discount", "shipping", "total"):
        _within_schema(name, getattr(order, name), AMOUNT_LIMIT)
    if min(order.discount, order.shipping) < 0:
        raise InvalidOrderError("order discount and shipping must not be negative")
    expected = sum((line.total for line in lines), Decimal(0)) - order.discount + order.shipping
    if abs(expected - order.total) > ONE_CENT:
        raise InvalidOrderError(f"total {order.total} != lines - discount + shipping {expected}")
    return order


# decimal(18, 4) and decimal(20, 10): at most 14 and 10 digits before the point. A producer
# that ignores the schema's precision gets its value silently rounded by the decoder (9…9 with
# 50 digits reads as 1E+50): such an amount is the producer's error, not a price.
AMOUNT_LIMIT = Decimal(10) ** 14
RATE_LIMIT = Decimal(10) ** 10


def _within_schema(name: str, value: Decimal | None, limit: Decimal) -> None:
    if value is not None and not (value.is_finite() and abs(value) < limit):
        raise InvalidOrderError(f"{name} is outside the schema's decimal precision")


def _line(index: int, raw: Mapping[str, Any]) -> OrderLine:
    line = OrderLine(**raw)
    for name in ("unit_price", "discount", "total"):
        _within_schema(f"line {index}: {name}", getattr(line, name), AMOUNT_LIMIT)
    if line.quantity <= 0:
        raise InvalidOrderError(f"line {index}: quantity must be positive")
    if min(line.unit_price, line.discount) < 0:
        raise InvalidOrderError(f"line {index}: negative price or discount")
    if abs(line.unit_price * line.quantity - line.discount - line.total) > ONE_CENT:
        raise InvalidOrderError(f"line {index}: total != unit_price * quantity - discount")
    return line
