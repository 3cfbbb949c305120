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
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from consumer.errors import InvalidOrderError, RecordError, UndecodableError
from consumer.model import Address, Customer, Order, OrderLine
from consumer.registry import SchemaRegistry

__all__ = ["Decoder", "SchemaRegistry", "load_schema", "to_order"]

MAGIC = 0
MAX_ORDER_NUMBER = 200
SHARED_MAX = 4096  # decoded orders kept for the other lanes (~4 KB each; FIFO out)
HEADER = struct.Struct(">bI")
ONE_CENT = Decimal("0.01")


def canonical_form(schema: Any) -> str:
    return str(fastavro.schema.to_parsing_canonical_form(schema))


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
        self._registry = registry
        # A writer equal to the reader needs no resolution: comparing schemas on every record
        # costs a quarter of the decode, so it is done once per writer schema.
        self._writer = None if writer_schema is None else self._pair(writer_schema)
        self._known: dict[int, tuple[Any, Any]] = {}  # schema id → (writer, reader or None)
        self._shared: OrderedDict[tuple[str, int, int], list[Any]] = OrderedDict()
        self.readers = 0  # lanes decoding the same records (each lane adds itself)
        self.decoded = 0  # records decoded: one per record read while the lanes share
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
            self._known[schema_id] = self._pair(await self._registry.writer_schema(schema_id))
        except UndecodableError as exc:
            self._unknown[schema_id] = exc  # ids never change: every such record is poison

    def _pair(self, writer: Any) -> tuple[Any, Any]:
        same = canonical_form(writer) == canonical_form(self._reader)
        return writer, None if same else self._reader

    @property
    def registry(self) -> SchemaRegistry | None:
        return self._registry

    def add_reader(self) -> None:
        self.readers += 1

    def decode_shared(self, where: tuple[str, int, int], value: bytes | None) -> Order:
        """`decode_now`, once per record for all lanes of the process: lanes read the same
        records at about the same time, so the first decodes and the others take its result.
        An entry leaves once every lane took it, or when SHARED_MAX newer records pushed it
        out (a lane far behind then decodes for itself)."""
        entry = self._shared.get(where)
        if entry is None:
            try:
                result: Order | RecordError = self.decode_now(value)
            except RecordError as exc:
                result = exc
            if self.readers > 1:
                self._shared[where] = [result, self.readers - 1]
                if len(self._shared) > SHARED_MAX:
                    self._shared.popitem(last=False)
        else:
            result, entry[1] = entry[0], entry[1] - 1
            if entry[1] <= 0:
                del self._shared[where]
        if isinstance(result, RecordError):
            raise type(result)(str(result))
        return result

    def decode_now(self, value: bytes | None) -> Order:
        self.decoded += 1
        if not value:
            raise UndecodableError("empty record value (tombstone?)")
        if self._registry is not None:
            if len(value) < HEADER.size or value[0] != MAGIC:
                raise UndecodableError("not in Confluent wire format (no magic byte 0)")
            _, schema_id = HEADER.unpack_from(value)
            pair = self._known.get(schema_id)
            if pair is None:
                if (refused := self._unknown.get(schema_id)) is not None:
                    raise UndecodableError(str(refused))
                raise SchemaPending(schema_id)
            body = memoryview(value)[HEADER.size :]
        else:
            assert self._writer is not None  # schemaless: given at construction
            pair, body = self._writer, memoryview(value)
        writer, reader = pair
        buffer = io.BytesIO(body)
        try:
            record = fastavro.schemaless_reader(buffer, writer, reader)
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
    if len(number) > MAX_ORDER_NUMBER or not number.isprintable():
        # It keys the ledger, the vendors' ids and the dead letters: a megabyte, a NUL or a
        # line break there is a producer's error, refused before it can block a batch.
        raise InvalidOrderError(
            f"order_number is longer than {MAX_ORDER_NUMBER} characters or not printable"
        )
    currency = record["currency"]
    if not (
        len(currency) == 3 and currency.isascii() and currency.isalpha() and currency.isupper()
    ):
        raise InvalidOrderError(f"currency {currency!r} is not an ISO 4217 code")
    completed_at = record["completed_at"]
    if not isinstance(completed_at, datetime):
        raise InvalidOrderError("completed_at is not a timestamp")
    try:
        lines = tuple([_line(i, line) for i, line in enumerate(record["lines"])])
        discount, shipping, total = record["discount"], record["shipping"], record["total"]
        rate = record.get("exchange_rate")
        _check_amounts(lines, discount, shipping, total, rate)
    except ArithmeticError as exc:  # NaN or infinity in a hand-made record
        raise InvalidOrderError(f"an amount is not a finite number: {exc!r}") from None
    customer, address = record.get("customer"), record.get("address")
    return Order(
        order_number=number,
        completed_at=completed_at.astimezone(UTC),
        currency=currency,
        lines=lines,
        discount=discount,
        shipping=shipping,
        total=total,
        state=record["state"],
        customer=Customer(**customer) if customer else Customer(),
        address=Address(**address) if address else Address(),
        order_id=record.get("order_id"),
        exchange_rate=rate,
        coupon_codes=tuple(record.get("coupon_codes") or ()),
        shop_id=record.get("shop_id"),
        payment_method=record.get("payment_method"),
        shipping_method=record.get("shipping_method"),
        nibble_session_token=record.get("nibble_session_token"),
        cart_nibble_id=record.get("cart_nibble_id"),
        tags=tuple(record.get("tags") or ()),
        custom_fields=dict(record.get("custom_fields") or {}),
    )


# decimal(18, 4) and decimal(20, 10): at most 14 and 10 digits before the point. A producer
# that ignores the schema's precision gets its value silently rounded by the decoder (9…9 with
# 50 digits reads as 1E+50): such an amount is the producer's error, not a price.
AMOUNT_LIMIT = Decimal(10) ** 14
RATE_LIMIT = Decimal(10) ** 10


def _check_amounts(
    lines: tuple[OrderLine, ...],
    discount: Decimal,
    shipping: Decimal,
    total: Decimal,
    rate: Decimal | None,
) -> None:
    if not lines:
        raise InvalidOrderError("order has no lines")
    if rate is not None:
        if rate <= 0:
            raise InvalidOrderError("exchange_rate must be positive")
        if rate >= RATE_LIMIT:
            raise InvalidOrderError("exchange_rate is outside the schema's decimal precision")
    for name, value in (("discount", discount), ("shipping", shipping), ("total", total)):
        if abs(value) >= AMOUNT_LIMIT:
            raise InvalidOrderError(f"{name} is outside the schema's decimal precision")
    if discount < 0 or shipping < 0:
        raise InvalidOrderError("order discount and shipping must not be negative")
    expected = sum([line.total for line in lines], Decimal(0)) - discount + shipping
    if abs(expected - total) > ONE_CENT:
        raise InvalidOrderError(f"total {total} != lines - discount + shipping {expected}")


def _line(index: int, raw: Mapping[str, Any]) -> OrderLine:
    line = OrderLine(**raw)
    unit_price, discount, total = line.unit_price, line.discount, line.total
    if max(abs(unit_price), abs(discount), abs(total)) >= AMOUNT_LIMIT:
        raise InvalidOrderError(
            f"line {index}: an amount is outside the schema's decimal precision"
        )
    if line.quantity <= 0:
        raise InvalidOrderError(f"line {index}: quantity must be positive")
    if unit_price < 0 or discount < 0:
        raise InvalidOrderError(f"line {index}: negative price or discount")
    if abs(unit_price * line.quantity - discount - total) > ONE_CENT:
        raise InvalidOrderError(f"line {index}: total != unit_price * quantity - discount")
    return line
