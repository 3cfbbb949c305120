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

import asyncio
import io
import json
import random
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import httpx
from fastavro.schema import SchemaParseException

from consumer.errors import InvalidOrderError, UndecodableError
from consumer.logs import get_logger
from consumer.model import Address, Customer, Order, OrderLine

log = get_logger(__name__)

MAGIC = 0
HEADER = struct.Struct(">bI")
ONE_CENT = Decimal("0.01")


def load_schema(path: Path) -> Any:
    return fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))


class SchemaRegistry:
    """Fetches writer schemas by id; caches the parsed schema forever (ids are immutable)."""

    def __init__(self, client: httpx.AsyncClient, *, retry_max_s: float = 30.0) -> None:
        self._client = client
        self._parsed: dict[int, Any] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._retry_max_s = retry_max_s

    async def writer_schema(self, schema_id: int) -> Any:
        if (parsed := self._parsed.get(schema_id)) is not None:
            return parsed
        if (pending := self._pending.get(schema_id)) is not None:
            return await pending  # one fetch per id, however many records wait for it
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[schema_id] = future
        try:
            parsed = await self._fetch(schema_id)
            self._parsed[schema_id] = parsed
            future.set_result(parsed)
            return parsed
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._pending[schema_id]

    async def _fetch(self, schema_id: int) -> Any:
        delay = 0.2
        while True:
            try:
                response = await self._client.get(f"/schemas/ids/{schema_id}")
            except httpx.TransportError as exc:
                log.warning("registry.unreachable", schema_id=schema_id, error=type(exc).__name__)
            else:
                if response.status_code == 404 and _error_code(response) == SCHEMA_NOT_FOUND:
                    raise UndecodableError(f"unknown schema id {schema_id}")
                if response.status_code == 200:
                    schema, problem = _schema_text(response)
                    if schema is not None:
                        return _parse_writer_schema(schema_id, schema)
                    # A proxy's error page or a half-written answer: the registry's fault, not
                    # the record's. Wait for a proper answer, never dead-letter.
                    log.warning("registry.bad_response", schema_id=schema_id, problem=problem)
                else:
                    log.warning("registry.error", schema_id=schema_id, status=response.status_code)
            # The registry being down is not the record's fault: wait, never dead-letter.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._retry_max_s)


SCHEMA_NOT_FOUND = 40403  # a plain 404 is a wrong registry URL: wait for a fix, never dead-letter


def _schema_text(response: httpx.Response) -> tuple[str | None, str]:
    """The `schema` string of a 200 answer, or None and what is wrong with the answer."""
    try:
        body = response.json()
    except ValueError:
        return None, "the body is not JSON"
    schema = body.get("schema") if isinstance(body, dict) else None
    if not isinstance(schema, str):
        return None, "the JSON has no string 'schema'"
    return schema, ""


def _parse_writer_schema(schema_id: int, schema: str) -> Any:
    """A schema the registry did return under this id but that is not Avro stays unreadable
    for good (ids are immutable): the records written with it are dead-lettered."""
    try:
        return fastavro.parse_schema(json.loads(schema))
    except (ValueError, KeyError, TypeError, AttributeError, SchemaParseException) as exc:
        raise UndecodableError(f"schema id {schema_id} is not Avro") from exc


def _error_code(response: httpx.Response) -> int | None:
    try:
        code = response.json().get("error_code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


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

    async def decode(self, value: bytes | None) -> Order:
        if not value:
            raise UndecodableError("empty record value (tombstone?)")
        if self._registry is not None:
            if len(value) < HEADER.size or value[0] != MAGIC:
                raise UndecodableError("not in Confluent wire format (no magic byte 0)")
            _, schema_id = HEADER.unpack_from(value)
            writer = await self._registry.writer_schema(schema_id)
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
    if min(order.discount, order.shipping) < 0:
        raise InvalidOrderError("order discount and shipping must not be negative")
    expected = sum((line.total for line in lines), Decimal(0)) - order.discount + order.shipping
    if abs(expected - order.total) > ONE_CENT:
        raise InvalidOrderError(f"total {order.total} != lines - discount + shipping {expected}")
    return order


def _line(index: int, raw: Mapping[str, Any]) -> OrderLine:
    line = OrderLine(**raw)
    if line.quantity <= 0:
        raise InvalidOrderError(f"line {index}: quantity must be positive")
    if min(line.unit_price, line.discount) < 0:
        raise InvalidOrderError(f"line {index}: negative price or discount")
    if abs(line.unit_price * line.quantity - line.discount - line.total) > ONE_CENT:
        raise InvalidOrderError(f"line {index}: total != unit_price * quantity - discount")
    return line
