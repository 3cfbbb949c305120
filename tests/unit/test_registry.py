"""The registry client: references resolve, and a registry that refuses us holds records (it
never gets them dead-lettered) while saying why."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import fastavro
import httpx
import pytest

from consumer import logs
from consumer.config import RegistrySettings, Secret
from consumer.decode import Decoder
from consumer.devenv.samples import (
    encode_confluent,
    load_schema,
    sample_orders,
    schemas_with_references,
)
from consumer.devenv.tls import make_tls_files
from consumer.errors import ConfigError, UndecodableError
from consumer.registry import SchemaRegistry, build_registry_client

READER = load_schema()
NAMESPACE = "com.shop.orders.v1"


SPLIT = schemas_with_references()
ORDER, CUSTOMER, ADDRESS = SPLIT["order"], SPLIT["customer"], SPLIT["address"]
REFS = {
    "address": {"schema": json.dumps(ADDRESS)},
    "customer": {"schema": json.dumps(CUSTOMER), "references": [
        {"name": f"{NAMESPACE}.Address", "subject": "address", "version": 1}]},
}  # fmt: skip
ORDER_REFS = [
    {"name": f"{NAMESPACE}.Customer", "subject": "customer", "version": 1},
    {"name": f"{NAMESPACE}.Address", "subject": "address", "version": 1},
]
Answer = Callable[[httpx.Request], httpx.Response]


def registry_answering(answer: Answer, calls: list[str] | None = None) -> SchemaRegistry:
    def handler(request: httpx.Request) -> httpx.Response:
        if calls is not None:
            calls.append(request.url.path)
        return answer(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://reg")
    return SchemaRegistry(client, retry_max_s=0.01, credentials_retry_s=0.01)


def well_behaved(request: httpx.Request) -> httpx.Response:
    path = request.url.path
    if path.startswith("/schemas/ids/"):
        return httpx.Response(200, json={"schema": json.dumps(ORDER), "references": ORDER_REFS})
    subject = path.split("/")[2]
    if subject in REFS and path.endswith("/versions/1"):
        assert request.url.params["deleted"] == "true"  # a soft-deleted reference still decodes
        return httpx.Response(200, json={"subject": subject, "version": 1, **REFS[subject]})
    return httpx.Response(404, json={"error_code": 40401, "message": "Subject not found"})


def written_with_references(count: int = 5, schema_id: int = 3) -> list[bytes]:
    named: dict[str, Any] = {}
    for schema in (ADDRESS, CUSTOMER):
        fastavro.parse_schema(schema, named_schemas=named)
    writer = fastavro.parse_schema(ORDER, named_schemas=named)
    return [encode_confluent(r, writer, schema_id) for r in sample_orders(count)]


def decode_all(registry: SchemaRegistry, values: list[bytes]) -> list[Any]:
    decoder = Decoder(reader_schema=READER, registry=registry)

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(decoder.decode(v) for v in values))

    return asyncio.run(scenario())


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    logs.configure(level="debug", fmt="json", secrets=["sr-secret"])
    yield lambda: [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    logging.getLogger().handlers.clear()


def test_a_writer_schema_with_nested_references_decodes_and_each_reference_is_fetched_once() -> (
    None
):
    calls: list[str] = []
    orders = decode_all(registry_answering(well_behaved, calls), written_with_references(10))
    assert [o.order_number for o in orders] == [r["order_number"] for r in sample_orders(10)]
    assert orders[0].customer.email == sample_orders(1)[0]["customer"]["email"]
    # Address is reached twice (order → Address, order → Customer → Address): fetched once.
    assert sorted(calls) == ["/schemas/ids/3", "/subjects/address/versions/1",
                             "/subjects/customer/versions/1"]  # fmt: skip


def test_a_missing_reference_makes_the_record_undecodable_with_the_reference_named() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if "/subjects/customer/" in request.url.path:
            return httpx.Response(404, json={"error_code": 40402, "message": "Version not found"})
        return well_behaved(request)

    with pytest.raises(UndecodableError, match=r"Customer \(customer version 1\) not found"):
        decode_all(registry_answering(answer), written_with_references(1))


def test_a_refusal_while_fetching_a_reference_holds_the_record_too() -> None:
    refusals = {"left": 2}

    def answer(request: httpx.Request) -> httpx.Response:
        if "/subjects/address/" in request.url.path and refusals["left"]:
            refusals["left"] -= 1
            return httpx.Response(403, json={"error_code": 40301, "message": "Forbidden"})
        return well_behaved(request)

    registry = registry_answering(answer)
    assert len(decode_all(registry, written_with_references(2))) == 2
    assert refusals["left"] == 0
    assert registry.health.state == "ok"


def test_a_reference_that_does_not_define_the_named_type_is_not_avro() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/schemas/ids/"):
            return httpx.Response(200, json={"schema": json.dumps(ORDER), "references": []})
        return well_behaved(request)

    with pytest.raises(UndecodableError, match="schema id 3 is not Avro"):
        decode_all(registry_answering(answer), written_with_references(1))


def test_refused_credentials_hold_the_record_say_so_and_recover_without_dead_lettering(
    log_lines: Callable[[], list[dict[str, Any]]],
) -> None:
    refusals = {"left": 3}
    health_seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        health_seen.append((registry.health.state, registry.health.reason))
        if refusals["left"]:
            refusals["left"] -= 1
            return httpx.Response(401, json={"error_code": 40101, "message": "Unauthorized"})
        return well_behaved(request)

    registry = registry_answering(answer)
    orders = decode_all(registry, written_with_references(3))
    assert len(orders) == 3  # decoded once the registry accepted us: nothing given up
    assert health_seen[1] == ("paused", "the schema registry refused the credentials (HTTP 401)")
    assert registry.health.state == "ok"
    events = [line for line in log_lines() if line["event"].startswith("registry.")]
    refused = [e for e in events if e["event"] == "registry.refused"]
    assert len(refused) == 3
    assert refused[0]["level"] == "error"
    assert refused[0]["registry"] == "http://reg"
    assert refused[0]["status"] == 401
    assert events[-1]["event"] == "registry.recovered"


@pytest.mark.parametrize(
    ("failure", "state"),
    [
        (lambda: httpx.Response(200, text="<html>proxy login</html>"), "retrying"),
        (lambda: httpx.Response(503, json={"message": "down"}), "retrying"),
        (lambda: httpx.Response(404, text="Not Found"), "paused"),  # a wrong URL, not the id
        (lambda: httpx.Response(302, headers={"location": "https://elsewhere"}), "paused"),
    ],
)
def test_registry_trouble_is_waited_out_and_never_blamed_on_the_record(
    failure: Callable[[], httpx.Response], state: str
) -> None:
    states: list[str] = []
    failures = {"left": 2}

    def answer(request: httpx.Request) -> httpx.Response:
        if failures["left"]:
            failures["left"] -= 1
            states.append(registry.health.state)
            return failure()
        return well_behaved(request)

    registry = registry_answering(answer)
    assert len(decode_all(registry, written_with_references(2))) == 2
    assert states == ["ok", state]


def test_a_registry_certificate_that_does_not_verify_pauses_with_the_tls_reason() -> None:
    failures = {"left": 1}
    reasons: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        reasons.append(f"{registry.health.state}: {registry.health.reason}")
        if failures["left"]:
            failures["left"] -= 1
            cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
            cause.verify_message = "unable to get local issuer certificate"
            raise httpx.ConnectError("handshake") from cause
        return well_behaved(request)

    registry = registry_answering(answer)
    decode_all(registry, written_with_references(1))
    assert reasons[1] == ("paused: TLS with the schema registry failed: certificate verify "
                          "failed: unable to get local issuer certificate")  # fmt: skip


def test_basic_auth_and_bearer_token_are_sent_as_confluent_clients_send_them() -> None:
    basic = build_registry_client(
        "https://reg.example",
        RegistrySettings(basic_auth_user_info=Secret("SRKEY:sr-secret:with-colon")),
        timeout_s=5,
    )
    request = next(basic.auth.auth_flow(httpx.Request("GET", "https://reg.example/")))  # type: ignore[union-attr]
    expected = "Basic " + base64.b64encode(b"SRKEY:sr-secret:with-colon").decode()
    assert request.headers["authorization"] == expected
    bearer = build_registry_client(
        "https://reg.example", RegistrySettings(bearer_token=Secret("tok-123")), timeout_s=5
    )
    assert bearer.headers["authorization"] == "Bearer tok-123"
    assert not bearer.follow_redirects


def test_a_client_certificate_that_does_not_match_its_key_is_a_configuration_error(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    tls = make_tls_files(tmp_path)
    ok = RegistrySettings(ca_location=tls.ca, certificate_location=tls.client_cert,
                          key_location=tls.client_key)  # fmt: skip
    build_registry_client("https://reg.example", ok, timeout_s=5)
    wrong = RegistrySettings(certificate_location=tls.client_cert, key_location=tls.server_key)
    with pytest.raises(ConfigError, match="CERTIFICATE_LOCATION"):
        build_registry_client("https://reg.example", wrong, timeout_s=5)
    garbage = tmp_path / "not-a-ca.pem"
    garbage.write_text("nope")
    with pytest.raises(ConfigError, match="CA_LOCATION"):
        build_registry_client("https://reg.example", RegistrySettings(ca_location=garbage),
                              timeout_s=5)  # fmt: skip


def test_evolved_writers_with_references_resolve_against_the_reader() -> None:
    newer = copy.deepcopy(ORDER)
    newer["fields"].append({"name": "loyalty_tier", "type": "string", "default": "none"})

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/schemas/ids/4":
            return httpx.Response(200, json={"schema": json.dumps(newer), "references": ORDER_REFS})
        return well_behaved(request)

    named: dict[str, Any] = {}
    for schema in (ADDRESS, CUSTOMER):
        fastavro.parse_schema(schema, named_schemas=named)
    writer = fastavro.parse_schema(newer, named_schemas=named)
    record = {**sample_orders(1)[0], "loyalty_tier": "gold"}
    [order] = decode_all(registry_answering(answer), [encode_confluent(record, writer, 4)])
    assert order.order_number == record["order_number"]
