"""Schema Registry credentials and TLS files are checked at start and never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.config import load
from consumer.errors import ConfigError
from tests.unit.test_config import BASE

REGISTRY = {**BASE, "CONSUMER_SCHEMA_REGISTRY_URL": "https://sr.example.com"}


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for key, name in (("ca", "ca.pem"), ("cert", "client.pem"), ("key", "client.key")):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
        files[key] = str(tmp_path / name)
    return files


def test_basic_auth_from_a_file_with_ca_and_client_certificate(
    tmp_path: Path, pem_files: dict[str, str]
) -> None:
    info = tmp_path / "sr-user-info"
    info.write_text("SRKEY123:sr-s3cret/with:colon\n")
    settings = load({
        **REGISTRY,
        "CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE": str(info),
        "CONSUMER_SCHEMA_REGISTRY_CA_LOCATION": pem_files["ca"],
        "CONSUMER_SCHEMA_REGISTRY_CERTIFICATE_LOCATION": pem_files["cert"],
        "CONSUMER_SCHEMA_REGISTRY_KEY_LOCATION": pem_files["key"],
    })  # fmt: skip
    registry = settings.registry
    assert registry.basic_auth_user_info is not None
    assert registry.basic_auth_user_info.reveal() == "SRKEY123:sr-s3cret/with:colon"
    assert registry.credentials == "basic"
    assert registry.ca_location == Path(pem_files["ca"])
    assert "SRKEY123:sr-s3cret/with:colon" in settings.secrets()
    assert "sr-s3cret/with:colon" in settings.secrets()  # the password alone is scrubbed too
    assert "sr-s3cret" not in repr(settings)


def test_a_bearer_token_is_a_secret_too() -> None:
    settings = load({**REGISTRY, "CONSUMER_SCHEMA_REGISTRY_BEARER_TOKEN": "eyJhbGciOi-token"})
    assert settings.registry.credentials == "bearer"
    assert "eyJhbGciOi-token" in settings.secrets()
    assert "eyJhbGciOi-token" not in repr(settings)


def test_no_registry_settings_means_no_credentials_and_public_roots() -> None:
    registry = load(REGISTRY).registry
    assert registry.credentials is None
    assert registry.ca_location is None
    assert registry.certificate_location is None


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "just-a-key"}, "<user>:<secret>"),
        ({"CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "a:b",
          "CONSUMER_SCHEMA_REGISTRY_BEARER_TOKEN": "t0ken"}, "not both"),
        ({"CONSUMER_SCHEMA_REGISTRY_CA_LOCATION": "/nonexistent/ca.pem"},
         "CA_LOCATION: no file at /nonexistent/ca.pem"),
        ({"CONSUMER_SCHEMA_REGISTRY_CERTIFICATE_LOCATION": "{cert}"}, "go together"),
        ({"CONSUMER_SCHEMA_REGISTRY_KEY_LOCATION": "{key}"}, "go together"),
        ({"CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO_FILE": "/nonexistent/info"},
         "cannot read /nonexistent/info"),
        ({"CONSUMER_SCHEMA_REGISTRY_URL": "http://sr.example.com",
          "CONSUMER_SCHEMA_REGISTRY_BEARER_TOKEN": "t0ken"}, "must use https"),
        ({"CONSUMER_SCHEMA_REGISTRY_URL": "", "CONSUMER_AVRO_FORMAT": "schemaless",
          "CONSUMER_SCHEMA_REGISTRY_BEARER_TOKEN": "t0ken"}, "SCHEMA_REGISTRY_URL is not"),
        ({"CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USERINFO": "a:b"}, "unknown setting"),
    ],
)  # fmt: skip
def test_registry_setting_mistakes_stop_the_start_with_the_setting_named(
    overrides: dict[str, str], problem: str, pem_files: dict[str, str]
) -> None:
    env = {**REGISTRY, **{k: v.format_map(pem_files) for k, v in overrides.items()}}
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(")):
        load(env)


def test_credentials_over_plain_http_are_fine_on_loopback_only() -> None:
    settings = load({**REGISTRY, "CONSUMER_SCHEMA_REGISTRY_URL": "http://127.0.0.1:8081",
                     "CONSUMER_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": "a:b"})  # fmt: skip
    assert settings.registry.credentials == "basic"
