"""Connecting to a secured cluster exactly as README "Connecting to a secured cluster" documents
it: Confluent Cloud-style (SASL_SSL + PLAIN, registry API key), SCRAM with a private CA, and
mutual TLS, each with records written by Confluent's own serializer (schema references, an
evolved schema); and what an operator sees when the Kafka password, the broker's certificate or
the registry's credentials are wrong: a clear error, nothing committed, nothing dead-lettered.
"""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaReference, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from consumer.devenv.kafka import free_port
from consumer.devenv.samples import sample_orders, schemas_with_references
from consumer.sandbox.control import SandboxControl, ServerTls, run_app_in_thread
from consumer.sandbox.registry import RegistryAuth, build_registry_app
from consumer.sandbox.settings import SandboxSettings
from tests.integration.conftest import SecuredKafka, Stage, readiness, wait_until
from tests.integration.expectations import expected_keys

pytestmark = pytest.mark.integration
VENDORS = ("nibble", "nudgify", "custobar")
NAMESPACE = "com.shop.orders.v1"
SR_USER_INFO = f"SRAPIKEY1:{secrets.token_urlsafe(24)}"  # Confluent Cloud: "<api key>:<secret>"
SR_BEARER = secrets.token_urlsafe(32)
Env = dict[str, str]


@pytest.fixture(scope="module")
def registries(secured_kafka: SecuredKafka) -> Iterator[dict[str, str]]:
    """Three registries over HTTPS (certificates from the private CA): API key as basic auth,
    a bearer token, and one that requires a client certificate."""
    tls = secured_kafka.tls
    served = ServerTls(tls.server_cert, tls.server_key)
    with ExitStack() as stack:
        yield {
            "basic": stack.enter_context(run_app_in_thread(
                build_registry_app(RegistryAuth(user_info=SR_USER_INFO)), tls=served)),
            "bearer": stack.enter_context(run_app_in_thread(
                build_registry_app(RegistryAuth(bearer_token=SR_BEARER)), tls=served)),
            "mtls": stack.enter_context(run_app_in_thread(
                build_registry_app(), tls=ServerTls(tls.server_cert, tls.server_key, tls.ca))),
        }  # fmt: skip


@pytest.fixture
def secured_stage(
    secured_kafka: SecuredKafka,
    sandbox_url: str,
    sandbox_settings: SandboxSettings,
    sandbox: SandboxControl,
    tmp_path: Path,
) -> Stage:
    """Topics on the secured broker, created (and inspected) through its plaintext listener."""
    return Stage(secured_kafka.broker.bootstrap_servers, sandbox_url, sandbox_settings, tmp_path,
                 partitions=2)  # fmt: skip


# ------------------------------------------------------------------ the documented settings


def secret_file(tmp: Path, name: str, value: str) -> str:
    path = tmp / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def sasl_ssl(k: SecuredKafka, tmp: Path, *, mechanism: str, user: str, password: str,
             ca: Path | None = None) -> Env:  # fmt: skip
    return {
        "CONSUMER_BOOTSTRAP_SERVERS": k.broker.sasl_ssl_servers,
        "CONSUMER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "CONSUMER_KAFKA__SASL_MECHANISMS": mechanism,
        "CONSUMER_KAFKA__SASL_USERNAME": user,
        "CONSUMER_KAFKA__SASL_PASSWORD_FILE": secret_file(tmp, "kafka-password", password),
        "CONSUMER_KAFKA__SSL_CA_LOCATION": str(ca or k.tls.ca),
    }


def mutual_tls(k: SecuredKafka) -> Env:
    return {
        "CONSUMER_BOOTSTRAP_SERVERS": k.broker.ssl_servers,
        "CONSUMER_KAFKA__SECURITY_PROTOCOL": "SSL",
        "CONSUMER_KAFKA__SSL_CA_LOCATION": str(k.tls.ca),
        "CONSUMER_KAFKA__SSL_CERTIFICATE_LOCATION": str(k.tls.client_cert),
        "CONSUMER_KAFKA__SSL_KEY_LOCATION": str(k.tls.client_key),
    }


def librdkafka(env: Env) -> dict[str, str]:
    """The same settings as a producer's librdkafka configuration."""
    conf = {"bootstrap.servers": env["CONSUMER_BOOTSTRAP_SERVERS"]}
    for key, value in env.items():
        if key.startswith("CONSUMER_KAFKA__"):
            name = key.removeprefix("CONSUMER_KAFKA__")
            if name.endswith("_FILE"):
                name, value = name.removesuffix("_FILE"), Path(value).read_text().strip()
            conf[name.lower().replace("_", ".")] = value
    return conf


# ------------------------------------------------ producing with Confluent's own serializer


def register_references(client: SchemaRegistryClient, prefix: str) -> list[SchemaReference]:
    """`Address` and `Customer` (which references `Address`) as their own subjects."""
    split = schemas_with_references()
    address, customer = f"{prefix}-{NAMESPACE}.Address", f"{prefix}-{NAMESPACE}.Customer"
    address_ref = SchemaReference(f"{NAMESPACE}.Address", address, 1)
    client.register_schema(address, Schema(json.dumps(split["address"]), "AVRO"))
    client.register_schema(customer, Schema(json.dumps(split["customer"]), "AVRO", [address_ref]))
    return [SchemaReference(f"{NAMESPACE}.Customer", customer, 1), address_ref]


V1 = schemas_with_references()["order"]
LOYALTY_TIER = {"name": "loyalty_tier", "type": "string", "default": "none"}
V2 = {**V1, "fields": [*V1["fields"], LOYALTY_TIER]}  # evolved: a new field with a default


def produce_with_confluent(stage: Stage, kafka: dict[str, str], registry: dict[str, str],
                           count: int) -> list[dict[str, Any]]:  # fmt: skip
    """Half the orders with the order schema that references `Customer`/`Address`, half with
    its evolved version 2 (a new field with a default): two schema ids under one subject."""
    client = SchemaRegistryClient(registry)
    try:
        references = register_references(client, stage.topic)
        orders = sample_orders(count, seed=31, prefix=f"S{stage.name[:4]}")
        producer = Producer({**kafka, "acks": "all", "linger.ms": 20})
        context = SerializationContext(stage.topic, MessageField.VALUE)
        half = count // 2
        for schema, batch in ((V1, orders[:half]), (V2, orders[half:])):
            serializer = AvroSerializer(client, Schema(json.dumps(schema), "AVRO", references))
            for order in batch:
                record = {**order, "loyalty_tier": "gold"} if schema is V2 else order
                producer.produce(stage.topic, key=order["order_number"].encode(),
                                 value=serializer(record, context))  # fmt: skip
        assert producer.flush(30) == 0
        # The evolved schema is version 2 of the subject, with its own schema id.
        assert client.get_versions(f"{stage.topic}-value") == [1, 2]
    finally:
        client.close()
    return orders


def assert_delivered_once_and_nothing_dead_lettered(
    stage: Stage, sandbox: SandboxControl, orders: list[dict[str, Any]]
) -> None:
    expected = expected_keys(orders)
    for vendor in VENDORS:
        got = [r["key"] for r in sandbox.records(vendor)]
        assert sorted(got) == sorted(expected[vendor]), vendor  # each once
    assert expected["nudgify"]  # e-mails came through the referenced Customer record
    assert stage.dead_letters(expected=0, timeout_s=1) == []
    assert stage.committed() == stage.end_offsets()


# ------------------------------------------------------------------ connection modes work


def test_confluent_cloud_style_sasl_plain_and_a_registry_api_key_deliver_every_order(
    secured_kafka: SecuredKafka, secured_stage: Stage, sandbox: SandboxControl,
    registries: dict[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    k = secured_kafka
    kafka = sasl_ssl(k, tmp_path, mechanism="PLAIN", user=k.api_key, password=k.api_secret)
    registry = {
        "CONSUMER_SCHEMA_REGISTRY_URL": registries["basic"],
        "CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE":
            secret_file(tmp_path, "sr-user-info", SR_USER_INFO),
        "CONSUMER_SCHEMA_REGISTRY_CA_LOCATION": str(k.tls.ca),
    }  # fmt: skip
    orders = produce_with_confluent(secured_stage, librdkafka(kafka), {
        "url": registries["basic"], "basic.auth.user.info": SR_USER_INFO,
        "ssl.ca.location": str(k.tls.ca)}, count=40)  # fmt: skip
    secured_stage.run_in_process(**kafka, **registry)
    assert_delivered_once_and_nothing_dead_lettered(secured_stage, sandbox, orders)


def test_scram_with_a_private_ca_and_a_bearer_token_registry_deliver_every_order(
    secured_kafka: SecuredKafka, secured_stage: Stage, sandbox: SandboxControl,
    registries: dict[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    k = secured_kafka
    kafka = sasl_ssl(k, tmp_path, mechanism="SCRAM-SHA-512", user=k.scram_user,
                     password=k.scram_password)  # fmt: skip
    registry = {
        "CONSUMER_SCHEMA_REGISTRY_URL": registries["bearer"],
        "CONSUMER_SCHEMA_REGISTRY_BEARER_TOKEN_FILE": secret_file(tmp_path, "sr-token", SR_BEARER),
        "CONSUMER_SCHEMA_REGISTRY_CA_LOCATION": str(k.tls.ca),
    }
    orders = produce_with_confluent(secured_stage, librdkafka(kafka), {
        "url": registries["bearer"], "ssl.ca.location": str(k.tls.ca),
        "bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": SR_BEARER,
        "bearer.auth.logical.cluster": "lsrc-test"}, count=30)  # fmt: skip
    secured_stage.run_in_process(**kafka, **registry)
    assert_delivered_once_and_nothing_dead_lettered(secured_stage, sandbox, orders)


def test_mutual_tls_to_the_broker_and_the_registry_delivers_every_order(
    secured_kafka: SecuredKafka, secured_stage: Stage, sandbox: SandboxControl,
    registries: dict[str, str],
) -> None:  # fmt: skip
    k = secured_kafka
    kafka = mutual_tls(k)
    registry = {
        "CONSUMER_SCHEMA_REGISTRY_URL": registries["mtls"],
        "CONSUMER_SCHEMA_REGISTRY_CA_LOCATION": str(k.tls.ca),
        "CONSUMER_SCHEMA_REGISTRY_CERTIFICATE_LOCATION": str(k.tls.client_cert),
        "CONSUMER_SCHEMA_REGISTRY_KEY_LOCATION": str(k.tls.client_key),
    }
    orders = produce_with_confluent(secured_stage, librdkafka(kafka), {
        "url": registries["mtls"], "ssl.ca.location": str(k.tls.ca),
        "ssl.certificate.location": str(k.tls.client_cert),
        "ssl.key.location": str(k.tls.client_key)}, count=30)  # fmt: skip
    secured_stage.run_in_process(**kafka, **registry)
    assert_delivered_once_and_nothing_dead_lettered(secured_stage, sandbox, orders)


# ------------------------------------------------------- what an operator sees when not


def log_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def run_until(stage: Stage, env: Env, seen: Callable[[list[dict[str, Any]]], bool]) -> tuple[
    list[dict[str, Any]], list[tuple[int, dict[str, Any]] | None], str
]:  # fmt: skip
    """A consumer process with these settings, until its log shows `seen`, then 3 s more (long
    enough for a good connection to get its partitions); then SIGTERM. Returns its log events,
    its readiness answers over those 3 s, and the raw log."""
    port, log_path = free_port(), stage.tmp / "consumer.log"
    process = stage.spawn(log_path=log_path, CONSUMER_HEALTH_PORT=str(port),
                          CONSUMER_SHUTDOWN_GRACE_S="2", **env)  # fmt: skip
    answers = []
    try:
        assert wait_until(lambda: seen(log_events(log_path)), timeout_s=30), log_path.read_text()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            answers.append(readiness(port))
            time.sleep(0.25)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    return log_events(log_path), answers, log_path.read_text(errors="replace")


def never_ready(answers: list[tuple[int, dict[str, Any]] | None]) -> bool:
    return bool(answers) and all(
        a is not None and a[0] == 503 and a[1]["ready"] is False for a in answers
    )


def committed_by_any_group(stage: Stage) -> dict[str, list[Any]]:
    """Every offset any consumer group committed on the stage's topic (the service may use one
    group or one per destination: this looks at them all)."""
    admin = AdminClient({"bootstrap.servers": stage.bootstrap})
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid]
    if not groups:
        return {}
    found = {}
    for group in groups:
        request = [ConsumerGroupTopicPartitions(group)]
        result = admin.list_consumer_group_offsets(request)[group].result(timeout=10)
        offsets = [tp for tp in result.topic_partitions
                   if tp.topic == stage.topic and tp.offset >= 0]  # fmt: skip
        if offsets:
            found[group] = offsets
    return found


def assert_nothing_happened(stage: Stage, sandbox: SandboxControl) -> None:
    assert committed_by_any_group(stage) == {}
    assert stage.dead_letters(expected=0, timeout_s=1) == []
    assert all(sandbox.records(vendor) == [] for vendor in VENDORS)


def kafka_errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "kafka.error"]


def errors_saying(events: list[dict[str, Any]], text: str) -> list[str]:
    """Error-level lines (librdkafka's own included) that say `text`."""
    return [e["event"] for e in events if e["level"] == "error" and text in e["event"]]


def test_a_wrong_kafka_password_is_reported_not_ready_nothing_committed_or_dead_lettered(
    secured_kafka: SecuredKafka, secured_stage: Stage, sandbox: SandboxControl, tmp_path: Path
) -> None:
    k = secured_kafka
    secured_stage.produce_orders(10)
    wrong = "wrong-" + secrets.token_urlsafe(12)
    env = sasl_ssl(k, tmp_path, mechanism="SCRAM-SHA-512", user=k.scram_user, password=wrong)
    events, ready, raw = run_until(secured_stage, env, lambda ev: bool(
        errors_saying(ev, "SASL authentication error")))  # fmt: skip
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in errors_saying(
        events, "SASL authentication error")[0]  # fmt: skip
    assert "_AUTHENTICATION" in {e["code"] for e in kafka_errors(events)}
    assert never_ready(ready)
    assert wrong not in raw  # the password (from the file) is scrubbed from every log line
    assert_nothing_happened(secured_stage, sandbox)


def test_an_untrusted_broker_certificate_is_reported_not_ready_nothing_committed(
    secured_kafka: SecuredKafka, secured_stage: Stage, sandbox: SandboxControl, tmp_path: Path
) -> None:
    k = secured_kafka
    secured_stage.produce_orders(10)
    env = sasl_ssl(k, tmp_path, mechanism="SCRAM-SHA-512", user=k.scram_user,
                   password=k.scram_password, ca=k.tls.untrusted_ca)  # fmt: skip
    hint = "broker certificate could not be verified, verify that ssl.ca.location"
    events, ready, _ = run_until(secured_stage, env, lambda ev: bool(errors_saying(ev, hint)))
    assert "SSL handshake failed" in errors_saying(events, hint)[0]
    assert any("certificate verify failed" in e["error"] for e in kafka_errors(events))
    assert never_ready(ready)
    assert_nothing_happened(secured_stage, sandbox)


def test_a_registry_refusing_the_credentials_holds_records_and_a_fixed_secret_delivers_them(
    secured_kafka: SecuredKafka, secured_stage: Stage, sandbox: SandboxControl,
    registries: dict[str, str], tmp_path: Path,
) -> None:  # fmt: skip
    k = secured_kafka
    kafka = sasl_ssl(k, tmp_path, mechanism="SCRAM-SHA-512", user=k.scram_user,
                     password=k.scram_password)  # fmt: skip
    orders = produce_with_confluent(secured_stage, librdkafka(kafka), {
        "url": registries["basic"], "basic.auth.user.info": SR_USER_INFO,
        "ssl.ca.location": str(k.tls.ca)}, count=10)  # fmt: skip
    registry = {
        "CONSUMER_SCHEMA_REGISTRY_URL": registries["basic"],
        "CONSUMER_SCHEMA_REGISTRY_CA_LOCATION": str(k.tls.ca),
    }
    stale = "SRAPIKEY1:revoked-" + secrets.token_urlsafe(12)
    events, _, raw = run_until(secured_stage, {
        **kafka, **registry, "CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": stale,
    }, lambda ev: any(e["event"] == "registry.refused" for e in ev))  # fmt: skip
    refused = next(e for e in events if e["event"] == "registry.refused")
    assert refused["level"] == "error"
    assert refused["status"] == 401
    assert refused["registry"] == registries["basic"]
    assert "refused the credentials" in refused["error"]
    assert stale.partition(":")[2] not in raw
    assert not any(e["event"] == "record.dead_lettered" for e in events)
    assert_nothing_happened(secured_stage, sandbox)
    # The operator fixes the secret and restarts: every held record is delivered.
    fixed = {**registry, "CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": SR_USER_INFO}
    secured_stage.run_in_process(**kafka, **fixed)
    assert_delivered_once_and_nothing_dead_lettered(secured_stage, sandbox, orders)
