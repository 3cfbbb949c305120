"""Configuration is checked at start, with messages that name the setting to fix."""

from __future__ import annotations

import re
import time

import pytest

from consumer.config import load
from consumer.errors import ConfigError

BASE = {
    "CONSUMER_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
    "CONSUMER_IDEMPOTENCY_SECRET": "0123456789abcdef-secret",
    "CONSUMER_NIBBLE_API_KEY": "nib-key",
    "CONSUMER_NIBBLE_API_SECRET": "nib-secret-value",
    "CONSUMER_NUDGIFY_API_KEY": "nud-key-value",
    "CONSUMER_NUDGIFY_SITE_KEY": "510eeb08-814e-456a-b5c1-8c7c70cc4c00",
    "CONSUMER_CUSTOBAR_BASE_URL": "https://company.custobar.com",
    "CONSUMER_CUSTOBAR_TOKEN": "cb-token-value",
}


def test_defaults_are_production_safe() -> None:
    settings = load(BASE)
    assert settings.topic == "order-completed"
    assert settings.nibble.base_url == "https://api.nibble.website"
    assert settings.nibble.batch_size == 50
    assert settings.nibble.report_all_sales is True
    assert settings.avro_format == "schemaless"
    assert settings.ledger_url.startswith("sqlite:///")


def test_missing_credentials_are_named() -> None:
    env = {k: v for k, v in BASE.items() if k != "CONSUMER_NIBBLE_API_SECRET"}
    with pytest.raises(ConfigError, match="CONSUMER_NIBBLE_API_SECRET"):
        load(env)


def test_a_disabled_vendor_needs_no_credentials() -> None:
    env = {k: v for k, v in BASE.items() if not k.startswith("CONSUMER_NIBBLE")}
    settings = load({**env, "CONSUMER_NIBBLE_ENABLED": "false"})
    assert settings.nibble.enabled is False


def test_plain_http_is_refused_except_on_loopback() -> None:
    with pytest.raises(ConfigError, match="https"):
        load({**BASE, "CONSUMER_NUDGIFY_BASE_URL": "http://app.nudgify.com"})
    assert load({**BASE, "CONSUMER_NUDGIFY_BASE_URL": "http://127.0.0.1:8900/nudgify"})


def test_an_unknown_setting_is_an_error_not_a_silent_default() -> None:
    with pytest.raises(ConfigError, match="CONSUMER_NIBBLE_APIKEY"):
        load({**BASE, "CONSUMER_NIBBLE_APIKEY": "typo"})


def test_secrets_can_come_from_files_and_never_show_in_repr(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret_file = tmp_path / "nibble-secret"
    secret_file.write_text("from-a-file-secret\n")
    env = {k: v for k, v in BASE.items() if k != "CONSUMER_NIBBLE_API_SECRET"}
    settings = load({**env, "CONSUMER_NIBBLE_API_SECRET_FILE": str(secret_file)})
    assert settings.nibble.api_secret is not None
    assert settings.nibble.api_secret.reveal() == "from-a-file-secret"
    text = repr(settings) + str(settings)
    for value in ("from-a-file-secret", "nud-key-value", "cb-token-value", "0123456789abcdef"):
        assert value not in text


def test_kafka_settings_pass_through_to_librdkafka() -> None:
    settings = load({**BASE, "CONSUMER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                     "CONSUMER_KAFKA__SASL_MECHANISMS": "PLAIN",
                     "CONSUMER_KAFKA__SASL_USERNAME": "order-consumer",
                     "CONSUMER_KAFKA__SASL_PASSWORD": "kafka-password"})  # fmt: skip
    assert settings.kafka == {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN",
                              "sasl.username": "order-consumer",
                              "sasl.password": "kafka-password"}  # fmt: skip


def test_the_lanes_of_a_process_join_their_groups_under_one_client_id() -> None:
    """librdkafka's assignor orders the members of a rebalance by member id, which starts with
    the client id. One client id for the three lanes of a process (and another for the next
    process) makes members that join together get the same partitions in every destination's
    group, which is what lets the lanes of a process share one decode per record. With
    librdkafka's default client id for all, the bench's two processes decoded every record
    twice in 2 runs of 4."""
    from consumer.runner import consumer_config

    first, second = load(BASE), load(BASE)
    ids = {consumer_config(first, first.destination_group(d))["client.id"]
           for d in ("nibble", "nudgify", "custobar")}  # fmt: skip
    assert len(ids) == 1
    assert ids != {consumer_config(second, second.destination_group("nibble"))["client.id"]}
    chosen = load({**BASE, "CONSUMER_KAFKA__CLIENT_ID": "orders-eu"})
    assert consumer_config(chosen, "g")["client.id"] == "orders-eu"


def test_consumer_only_kafka_settings_stay_off_the_dead_letter_producer() -> None:
    """librdkafka warns at every start about a consumer property given to a producer."""
    from consumer.dead_letter import producer_config

    settings = load({**BASE, "CONSUMER_KAFKA__MAX_PARTITION_FETCH_BYTES": "524288",
                     "CONSUMER_KAFKA__QUEUED_MAX_MESSAGES_KBYTES": "4096",
                     "CONSUMER_KAFKA__FETCH_WAIT_MAX_MS": "100",
                     "CONSUMER_KAFKA__CLIENT_ID": "orders-eu-1"})  # fmt: skip
    producer = producer_config(settings)
    assert not {"max.partition.fetch.bytes", "queued.max.messages.kbytes",
                "fetch.wait.max.ms"} & set(producer)  # fmt: skip
    assert producer["client.id"] == "orders-eu-1"


def test_settings_the_commit_guarantee_depends_on_cannot_be_overridden() -> None:
    with pytest.raises(ConfigError, match=r"enable\.auto\.offset\.store"):
        load({**BASE, "CONSUMER_KAFKA__ENABLE_AUTO_OFFSET_STORE": "true"})


def test_nibble_batches_cannot_exceed_the_vendor_limit() -> None:
    with pytest.raises(ConfigError, match="NIBBLE_BATCH_SIZE"):
        load({**BASE, "CONSUMER_NIBBLE_BATCH_SIZE": "51"})


def test_the_idempotency_secret_is_required() -> None:
    env = {k: v for k, v in BASE.items() if k != "CONSUMER_IDEMPOTENCY_SECRET"}
    with pytest.raises(ConfigError, match="IDEMPOTENCY_SECRET"):
        load(env)


def test_kafka_secrets_can_come_from_files_and_are_scrubbed_from_logs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    password = tmp_path / "kafka-password"
    password.write_text("kafka-sasl-s3cret\n")
    settings = load({**BASE, "CONSUMER_KAFKA__SASL_PASSWORD_FILE": str(password)})
    assert settings.kafka["sasl.password"] == "kafka-sasl-s3cret"
    assert "kafka-sasl-s3cret" in settings.secrets()


def test_every_problem_is_reported_at_once_so_one_restart_fixes_them_all() -> None:
    env = {**BASE, "CONSUMER_NIBBLE_BASE_URL": "http://nibble.example", "CONSUMER_TYPO": "x",
           "CONSUMER_MAX_IN_FLIGHT": "lots"}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load(env)
    message = str(caught.value)
    assert "https" in message
    assert "CONSUMER_TYPO" in message
    assert "CONSUMER_MAX_IN_FLIGHT must be a number" in message


@pytest.mark.parametrize(
    "setting",
    [
        {"CONSUMER_KAFKA__ENABLE_SSL_CERTIFICATE_VERIFICATION": "false"},
        {"CONSUMER_KAFKA__SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "none"},
    ],
)
def test_kafka_tls_verification_cannot_be_turned_off_by_accident(setting: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="INSECURE_KAFKA_TLS"):
        load({**BASE, **setting})
    assert load({**BASE, **setting, "CONSUMER_INSECURE_KAFKA_TLS": "true"}).kafka


def test_the_dead_letter_topic_cannot_be_the_consumed_topic() -> None:
    with pytest.raises(ConfigError, match="DEAD_LETTER_TOPIC must differ"):
        load({**BASE, "CONSUMER_TOPIC": "orders", "CONSUMER_DEAD_LETTER_TOPIC": "orders"})


@pytest.mark.parametrize("code", ["euro", "EU", "XXX", "XTS", "HRK", "€"])
def test_the_custobar_default_currency_must_be_an_iso_4217_code(code: str) -> None:
    with pytest.raises(ConfigError, match="CUSTOBAR_DEFAULT_CURRENCY must be an ISO 4217 code"):
        load({**BASE, "CONSUMER_CUSTOBAR_DEFAULT_CURRENCY": code})


@pytest.mark.parametrize(("code", "expected"), [("eur", "EUR"), ("JPY", "JPY"), ("KWD", "KWD")])
def test_iso_4217_currencies_are_accepted(code: str, expected: str) -> None:
    settings = load({**BASE, "CONSUMER_CUSTOBAR_DEFAULT_CURRENCY": code})
    assert settings.custobar.default_currency == expected


def test_a_custobar_company_that_field_names_cannot_carry_is_refused() -> None:
    with pytest.raises(ConfigError, match="CUSTOBAR_COMPANY"):
        load({**BASE, "CONSUMER_CUSTOBAR_COMPANY": "my-shop"})
    assert load({**BASE, "CONSUMER_CUSTOBAR_COMPANY": "my_shop"}).custobar.company == "MY_SHOP"


URL_SETTINGS = ["NIBBLE_BASE_URL", "NUDGIFY_BASE_URL", "CUSTOBAR_BASE_URL", "SCHEMA_REGISTRY_URL"]


@pytest.mark.parametrize("name", URL_SETTINGS)
@pytest.mark.parametrize("userinfo", ["admin:hunter2-pw@", "admin@", ":hunter2-pw@"])
def test_user_info_in_a_url_setting_is_refused_without_echoing_it(name: str, userinfo: str) -> None:
    with pytest.raises(ConfigError, match=f"CONSUMER_{name} must not carry user-info") as caught:
        load({**BASE, f"CONSUMER_{name}": f"https://{userinfo}host.example"})
    assert "hunter2-pw" not in str(caught.value)
    assert "admin" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("file:///etc/passwd", "must be an http(s) URL"),
        ("http://registry.internal:8081", "must use https"),
        ("registry.internal:8081", "must be an http(s) URL"),
        ("https://[::1", "is not a valid URL"),
        ("https://registry.internal:99999", "is not a valid URL"),
    ],
)
def test_the_schema_registry_url_follows_the_vendor_url_rules(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"SCHEMA_REGISTRY_URL {problem}")):
        load({**BASE, "CONSUMER_SCHEMA_REGISTRY_URL": url})


@pytest.mark.parametrize("url", ["http://127.0.0.1:8081/", "https://registry.internal"])
def test_an_https_or_loopback_schema_registry_is_accepted(url: str) -> None:
    settings = load({**BASE, "CONSUMER_SCHEMA_REGISTRY_URL": url})
    assert settings.schema_registry_url == url.rstrip("/")
    assert settings.avro_format == "confluent"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ledger:hunter2-pw@db.internal/ledger",
        "postgresql://ledger@db.internal/ledger?password=hunter2-pw",
    ],
)
def test_a_password_in_the_ledger_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ConfigError, match="LEDGER_URL must not carry a password") as caught:
        load({**BASE, "CONSUMER_LEDGER_URL": url})
    assert "hunter2-pw" not in str(caught.value)


def test_a_ledger_url_with_a_user_but_no_password_is_fine() -> None:
    settings = load({**BASE, "CONSUMER_LEDGER_URL": "postgresql://ledger@db.internal/ledger"})
    assert settings.ledger_url == "postgresql://ledger@db.internal/ledger"


@pytest.mark.parametrize("level", ["verbose", "trace", "warn", "critical"])
def test_an_unknown_log_level_is_a_config_error(level: str) -> None:
    with pytest.raises(ConfigError, match="LOG_LEVEL must be one of debug, info, warning, error"):
        load({**BASE, "CONSUMER_LOG_LEVEL": level})
    assert load({**BASE, "CONSUMER_LOG_LEVEL": "DEBUG"}).log_level == "debug"


@pytest.mark.parametrize("key", ["my-site", "510eeb08814e456ab5c18c7c70cc4c00", "{510eeb08-814e}"])
def test_the_nudgify_site_key_must_be_a_uuid(key: str) -> None:
    with pytest.raises(ConfigError, match="NUDGIFY_SITE_KEY must be the site's UUID"):
        load({**BASE, "CONSUMER_NUDGIFY_SITE_KEY": key})


def test_the_nudgify_site_key_is_scrubbed_like_a_secret() -> None:
    assert BASE["CONSUMER_NUDGIFY_SITE_KEY"] in load(BASE).secrets()


@pytest.mark.parametrize(
    "variable", ["CONSUMER_NIBBLE_API_SECRET", "CONSUMER_KAFKA__SASL_PASSWORD"]
)
def test_a_secret_file_that_is_not_utf8_gives_a_clean_message(tmp_path, variable: str) -> None:  # type: ignore[no-untyped-def]
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"\xff\xfe latin-1 caf\xe9")
    env = {k: v for k, v in BASE.items() if k != variable}
    with pytest.raises(ConfigError, match=f"{variable}_FILE: .* is not UTF-8 text") as caught:
        load({**env, f"{variable}_FILE": str(secret_file)})
    assert caught.value.__cause__ is None
    assert "caf" not in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "refusal"),
    [
        ({"CONSUMER_KAFKA__NO_SUCH_SETTING": "1"}, "No such configuration property"),
        ({"CONSUMER_KAFKA__AUTO_OFFSET_RESET": "sometimes"}, "auto.offset.reset"),
        ({"CONSUMER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
          "CONSUMER_KAFKA__SASL_MECHANISMS": "PLAIN"}, "sasl.username and sasl.password"),
        ({"CONSUMER_KAFKA__SECURITY_PROTOCOL": "SSL",
          "CONSUMER_KAFKA__SSL_CA_LOCATION": "/nonexistent/ca.pem"}, "ssl.ca.location"),
        ({"CONSUMER_KAFKA__MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION": "10"}, "dead-letter producer"),
    ],
)  # fmt: skip
def test_kafka_settings_librdkafka_refuses_are_config_errors_found_without_a_broker(
    setting: dict[str, str], refusal: str
) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match="refused by librdkafka") as caught:
        load({**BASE, "CONSUMER_BOOTSTRAP_SERVERS": "10.255.255.1:9092", **setting})
    assert refusal in str(caught.value)
    assert time.monotonic() - started < 2.0  # librdkafka checks at construction: no broker


def test_librdkafka_refusals_never_echo_a_secret_value() -> None:
    with pytest.raises(ConfigError) as caught:
        load({**BASE, "CONSUMER_KAFKA__SASL_PASSWORD": "hunter2-kafka-pw",
              "CONSUMER_KAFKA__SASL_OAUTHBEARER_CLIENT_SECRET": "hunter2-kafka-pw",
              "CONSUMER_KAFKA__SECURITY_PROTOCOL": "nonsense"})  # fmt: skip
    assert "hunter2-kafka-pw" not in str(caught.value)


def test_the_consumer_group_protocol_is_reserved() -> None:
    with pytest.raises(ConfigError, match=r"group\.protocol is managed by the service"):
        load({**BASE, "CONSUMER_KAFKA__GROUP_PROTOCOL": "consumer"})


def test_max_in_flight_has_a_sane_maximum() -> None:
    assert load({**BASE, "CONSUMER_MAX_IN_FLIGHT": "20000"}).max_in_flight == 20_000
    with pytest.raises(ConfigError, match="MAX_IN_FLIGHT must be between"):
        load({**BASE, "CONSUMER_MAX_IN_FLIGHT": "20001"})


def test_the_flow_limits_have_documented_defaults() -> None:
    limits = load(BASE).limits
    assert limits.max_in_flight_bytes == 16 * 1024 * 1024
    assert limits.dlq_brake_ratio == 0.5
    assert limits.dlq_brake_window == 100
    assert limits.dlq_brake_min == 20
    assert limits.internal_error_retries == 5
    assert limits.stalled_record_s == 300


def test_the_flow_limits_can_be_set() -> None:
    limits = load({**BASE, "CONSUMER_MAX_IN_FLIGHT_BYTES": str(64 * 1024 * 1024),
                   "CONSUMER_DLQ_BRAKE_RATIO": "1", "CONSUMER_DLQ_BRAKE_WINDOW": "10",
                   "CONSUMER_DLQ_BRAKE_MIN": "10", "CONSUMER_INTERNAL_ERROR_RETRIES": "0",
                   "CONSUMER_STALLED_RECORD_S": "1"}).limits  # fmt: skip
    assert limits.max_in_flight_bytes == 64 * 1024 * 1024
    assert (limits.dlq_brake_ratio, limits.dlq_brake_window, limits.dlq_brake_min) == (1, 10, 10)
    assert (limits.internal_error_retries, limits.stalled_record_s) == (0, 1)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("MAX_IN_FLIGHT_BYTES", str(1024 * 1024 - 1), "must be between"),
        ("MAX_IN_FLIGHT_BYTES", str(1024**3 + 1), "must be between"),
        ("DLQ_BRAKE_RATIO", "0", "must be above 0"),
        ("DLQ_BRAKE_RATIO", "1.5", "must be between"),
        ("DLQ_BRAKE_WINDOW", "9", "must be between"),
        ("DLQ_BRAKE_WINDOW", "100001", "must be between"),
        ("DLQ_BRAKE_MIN", "0", "must be between"),
        ("DLQ_BRAKE_MIN", "101", "must not exceed CONSUMER_DLQ_BRAKE_WINDOW"),
        ("INTERNAL_ERROR_RETRIES", "101", "must be between"),
        ("INTERNAL_ERROR_RETRIES", "-1", "must be between"),
        ("STALLED_RECORD_S", "0.5", "must be between"),
    ],
)
def test_flow_limits_out_of_range_are_refused(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"CONSUMER_{name}.*{problem}"):
        load({**BASE, f"CONSUMER_{name}": value})


def test_the_new_checks_report_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load({**BASE, "CONSUMER_DEAD_LETTER_TOPIC": "order-completed",
              "CONSUMER_CUSTOBAR_DEFAULT_CURRENCY": "euro", "CONSUMER_CUSTOBAR_COMPANY": "my-shop",
              "CONSUMER_SCHEMA_REGISTRY_URL": "file:///etc/passwd", "CONSUMER_LOG_LEVEL": "verbose",
              "CONSUMER_NUDGIFY_SITE_KEY": "site", "CONSUMER_KAFKA__GROUP_PROTOCOL": "consumer",
              "CONSUMER_KAFKA__AUTO_OFFSET_RESET": "sometimes"})  # fmt: skip
    message = str(caught.value)
    for setting in ("DEAD_LETTER_TOPIC", "CUSTOBAR_DEFAULT_CURRENCY", "CUSTOBAR_COMPANY",
                    "SCHEMA_REGISTRY_URL", "LOG_LEVEL", "NUDGIFY_SITE_KEY", "group.protocol",
                    "auto.offset.reset"):  # fmt: skip
        assert setting in message


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"CONSUMER_TOPIC": "orders completed"}, "TOPIC 'orders completed' is not a Kafka topic"),
        ({"CONSUMER_TOPIC": "^orders-.*"}, "is not a Kafka topic name"),
        ({"CONSUMER_DEAD_LETTER_TOPIC": "bad topic!"}, "DEAD_LETTER_TOPIC 'bad topic!'"),
        ({"CONSUMER_WRITER_SCHEMA": "/etc/passwd"}, "WRITER_SCHEMA: /etc/passwd is not an Avro"),
        ({"CONSUMER_LEDGER_URL": "sqlite:///:memory:"}, "LEDGER_URL must name a file"),
        ({"CONSUMER_RETRY_INITIAL_S": "5", "CONSUMER_RETRY_MAX_S": "1"}, "RETRY_MAX_S must not"),
        ({"CONSUMER_CLAIM_LEASE_S": "1"}, "CLAIM_LEASE_S (1 s) must be at least twice"),
        ({"CONSUMER_KAFKA__TRANSACTIONAL_ID": "tx-1"}, "transactional.id is managed"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_start(
    overrides: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load({**BASE, **overrides})
    assert problem in str(refused.value)


def test_secret_kafka_settings_never_show_in_the_settings_repr_and_are_scrubbed() -> None:
    settings = load({
        **BASE,
        "CONSUMER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "CONSUMER_KAFKA__SASL_MECHANISMS": "OAUTHBEARER",
        "CONSUMER_KAFKA__SASL_OAUTHBEARER_CONFIG": "clientSecret=canary-cfg-XYZ",
    })  # fmt: skip
    assert "canary-cfg-XYZ" not in repr(settings)
    assert "clientSecret=canary-cfg-XYZ" in settings.secrets()
    assert settings.kafka["security.protocol"] == "SASL_SSL"  # the values themselves are intact
