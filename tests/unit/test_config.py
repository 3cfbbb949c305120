"""Configuration is checked at start, with messages that name the setting to fix."""

from __future__ import annotations

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
                     "CONSUMER_KAFKA__SASL_MECHANISMS": "PLAIN"})  # fmt: skip
    assert settings.kafka == {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN"}


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
