"""Records become Orders, or a reason they cannot; evolution in both directions decodes."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import struct
from decimal import Decimal
from typing import Any

import fastavro
import httpx
import pytest

from consumer.config import PACKAGED_SCHEMA
from consumer.decode import Decoder, SchemaRegistry
from consumer.devenv.samples import encode_confluent, encode_schemaless, load_schema, sample_orders
from consumer.errors import InvalidOrderError, UndecodableError

SCHEMA_JSON = json.loads(PACKAGED_SCHEMA.read_text())
SCHEMA = load_schema()


def schemaless() -> Decoder:
    return Decoder(reader_schema=SCHEMA, writer_schema=SCHEMA)


def decode(decoder: Decoder, value: bytes | None) -> Any:
    return asyncio.run(decoder.decode(value))


def registry_with(schemas: dict[int, dict[str, Any]], calls: list[int]) -> SchemaRegistry:
    def answer(request: httpx.Request) -> httpx.Response:
        schema_id = int(request.url.path.rsplit("/", 1)[-1])
        calls.append(schema_id)
        if schema_id not in schemas:
            return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found"})
        return httpx.Response(200, json={"schema": json.dumps(schemas[schema_id])})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://registry")
    return SchemaRegistry(client)


def test_a_schemaless_record_decodes_to_an_order_with_decimal_money() -> None:
    record = sample_orders(1)[0]
    order = decode(schemaless(), encode_schemaless(record, SCHEMA))
    assert order.order_number == record["order_number"]
    assert isinstance(order.total, Decimal)
    assert order.total == record["total"]
    assert order.completed_at.utcoffset() is not None
    assert len(order.lines) == len(record["lines"])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"\xff\xff\xff\xff\xff", "Avro decoding failed"),
    ],
)
def test_garbage_is_undecodable_with_a_reason(value: bytes | None, reason: str) -> None:
    with pytest.raises(UndecodableError, match=reason):
        decode(schemaless(), value)


def test_trailing_bytes_mean_the_wrong_writer_schema() -> None:
    value = encode_schemaless(sample_orders(1)[0], SCHEMA) + b"\x00\x01"
    with pytest.raises(UndecodableError, match="trailing"):
        decode(schemaless(), value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r.update(total=r["total"] + 5), "total"),
        (lambda r: r.update(currency="euro"), "currency"),
        (lambda r: r.update(lines=[]), "no lines"),
        (lambda r: r["lines"][0].update(quantity=0), "quantity"),
        (lambda r: r.update(order_number="  "), "order_number"),
    ],
)
def test_valid_avro_with_invalid_order_data_is_rejected(change: Any, reason: str) -> None:
    record = copy.deepcopy(sample_orders(1)[0])
    change(record)
    with pytest.raises(InvalidOrderError, match=reason):
        decode(schemaless(), encode_schemaless(record, SCHEMA))


def test_wire_format_fetches_each_schema_id_once() -> None:
    calls: list[int] = []
    decoder = Decoder(reader_schema=SCHEMA, registry=registry_with({7: SCHEMA_JSON}, calls))
    values = [encode_confluent(r, SCHEMA, 7) for r in sample_orders(20)]

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(decoder.decode(v) for v in values))

    orders = asyncio.run(scenario())
    assert len(orders) == 20
    assert calls == [7]


def test_an_unknown_schema_id_is_undecodable() -> None:
    decoder = Decoder(reader_schema=SCHEMA, registry=registry_with({}, []))
    with pytest.raises(UndecodableError, match="unknown schema id 9"):
        decode(decoder, struct.pack(">bI", 0, 9) + b"\x00")


def test_a_record_without_the_magic_byte_is_undecodable_in_wire_format() -> None:
    decoder = Decoder(reader_schema=SCHEMA, registry=registry_with({}, []))
    with pytest.raises(UndecodableError, match="magic"):
        decode(decoder, b"\x01\x00\x00\x00\x07rest")


def _evolved(extra_field: dict[str, Any] | None = None, drop: str | None = None) -> dict[str, Any]:
    schema = copy.deepcopy(SCHEMA_JSON)
    if extra_field:
        schema["fields"].append(extra_field)
    if drop:
        schema["fields"] = [f for f in schema["fields"] if f["name"] != drop]
    return schema


def test_a_newer_writer_with_an_added_field_still_decodes() -> None:
    newer = _evolved({"name": "loyalty_tier", "type": "string", "default": "none"})
    record = {**sample_orders(1)[0], "loyalty_tier": "gold"}
    value = encode_confluent(record, fastavro.parse_schema(newer), 2)
    decoder = Decoder(reader_schema=SCHEMA, registry=registry_with({2: newer}, []))
    assert decode(decoder, value).order_number == record["order_number"]


def test_an_older_writer_without_a_defaulted_field_still_decodes() -> None:
    older = _evolved(drop="custom_fields")
    record = sample_orders(1)[0]
    value = encode_confluent(record, fastavro.parse_schema(older), 1)
    decoder = Decoder(reader_schema=SCHEMA, registry=registry_with({1: older}, []))
    assert decode(decoder, value).custom_fields == {}


def test_an_amount_beyond_the_schemas_precision_is_an_invalid_order_not_a_rounded_price() -> None:
    """A non-conforming producer writes 50 nines into a decimal(18, 4): the decoder would
    silently read 1E+50. The order is refused (dead-lettered), never sent as that amount."""

    def widen(node: object) -> None:
        if isinstance(node, dict):
            if node.get("logicalType") == "decimal":
                node["precision"] = 60
            for value in node.values():
                widen(value)
        elif isinstance(node, list):
            for value in node:
                widen(value)

    loose = json.loads(PACKAGED_SCHEMA.read_text())
    widen(loose)
    order = sample_orders(1)[0]
    huge = Decimal("9" * 50)
    order = {**order, "shipping": huge, "total": order["total"] + huge}
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(loose), order)
    decoder = Decoder(reader_schema=load_schema(), writer_schema=load_schema())
    with pytest.raises(InvalidOrderError, match="shipping is outside the schema's decimal"):
        decoder.decode_now(buffer.getvalue())


def test_lanes_of_one_process_share_one_decode_per_record(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = Decoder(reader_schema=load_schema(), writer_schema=load_schema())
    for _ in range(3):
        decoder.add_reader()
    value = encode_schemaless(sample_orders(1)[0], load_schema())
    calls: list[bytes | None] = []
    real = decoder.decode_now
    monkeypatch.setattr(decoder, "decode_now", lambda v: calls.append(v) or real(v))
    orders = [decoder.decode_shared(("orders", 0, 7), value) for _ in range(3)]
    assert len(calls) == 1 and orders[0] is orders[1] is orders[2]
    assert decoder.decoded == 1  # what the service's summary reports
    decoder.decode_shared(("orders", 0, 7), value)  # every lane took it: gone, decoded anew
    assert len(calls) == 2
    with pytest.raises(UndecodableError):  # a poison record is poison for every lane
        decoder.decode_shared(("orders", 0, 8), b"\x01\x02")
    with pytest.raises(UndecodableError):
        decoder.decode_shared(("orders", 0, 8), b"\x01\x02")


@pytest.mark.parametrize("number", ["SO-" + "9" * 6000, "SO-1\x00", "SO-1\nSO-2"])
def test_an_order_number_no_ledger_or_vendor_can_key_is_an_invalid_order(number: str) -> None:
    """A 6,000-character order number blocked PostgreSQL's index; a NUL, its text columns."""
    order = {**sample_orders(1)[0], "order_number": number}
    decoder = Decoder(reader_schema=load_schema(), writer_schema=load_schema())
    with pytest.raises(InvalidOrderError, match="order_number is longer than"):
        decoder.decode_now(encode_schemaless(order, load_schema()))
