"""Records become Orders, or a reason they cannot; evolution in both directions decodes."""

from __future__ import annotations

import asyncio
import copy
import json
import struct
from decimal import Decimal
from typing import Any

import fastavro
import httpx
import pytest

from consumer import decode as decode_module
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


class RecordingLog:
    """Stands in for the module's structlog logger: keeps (event, fields) of each warning."""

    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append((event, fields))


def registry_answering(answers: list[httpx.Response]) -> tuple[SchemaRegistry, list[int]]:
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(int(request.url.path.rsplit("/", 1)[-1]))
        return answers[min(len(calls), len(answers)) - 1]

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://registry")
    return SchemaRegistry(client), calls


def test_a_registry_answering_200_with_a_broken_body_is_waited_out_not_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy's HTML error page, or JSON without a string `schema`, is the registry's fault:
    retried with a warning naming the problem, and the record decodes once the registry is well."""
    monkeypatch.setattr(decode_module.random, "uniform", lambda _a, _b: 0.0)  # no real waiting
    recorded = RecordingLog()
    monkeypatch.setattr(decode_module, "log", recorded)
    registry, calls = registry_answering([
        httpx.Response(200, text="<html>502 Bad Gateway</html>"),
        httpx.Response(200, json={"id": 7}),
        httpx.Response(200, json={"schema": {"type": "record"}}),
        httpx.Response(200, json=["schema"]),
        httpx.Response(200, json={"schema": json.dumps(SCHEMA_JSON)}),
    ])  # fmt: skip
    decoder = Decoder(reader_schema=SCHEMA, registry=registry)
    record = sample_orders(1)[0]
    order = decode(decoder, encode_confluent(record, SCHEMA, 7))
    assert order.order_number == record["order_number"]
    assert calls == [7] * 5
    problems = [fields["problem"] for event, fields in recorded.warnings]
    assert [event for event, _ in recorded.warnings] == ["registry.bad_response"] * 4
    assert problems == ["the body is not JSON", *["the JSON has no string 'schema'"] * 3]


@pytest.mark.parametrize(
    "schema",
    ["{not json", '{"type": "nonsense"}', '{"type": "record"}', '{"type": "array"}', "null"],
)
def test_a_returned_schema_that_is_not_avro_is_undecodable(schema: str) -> None:
    registry, calls = registry_answering([httpx.Response(200, json={"schema": schema})])
    decoder = Decoder(reader_schema=SCHEMA, registry=registry)
    with pytest.raises(UndecodableError, match="schema id 3 is not Avro"):
        decode(decoder, struct.pack(">bI", 0, 3) + b"\x00")
    assert calls == [3]
