"""The checks `config.load` applies that need more than the value's type: URL safety, codes and
names a vendor would refuse, and librdkafka's own judgement of the `KAFKA__` settings.

Each rule is a plain function returning the problem (a sentence naming the setting) or None, so
`load` can collect every problem of a start at once. No rule echoes a URL's user-info or a
secret: the messages end up on a terminal and in a pod's logs.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import fastavro
import fastavro.schema
from confluent_kafka import Consumer, KafkaException, Producer

from consumer.currencies import ACTIVE_CURRENCIES
from consumer.redaction import Redactor
from consumer.transform.custobar import company_prefix

PREFIX = "CONSUMER_"
LOG_LEVELS = ("debug", "info", "warning", "error")
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def http_url_problem(name: str, url: str) -> str | None:
    """https only, except loopback (the sandbox): credentials must never travel in clear text.
    No user-info: a password in a URL lands in logs, error texts and `repr(settings)`."""
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a port out of range
    except ValueError:
        return f"{PREFIX}{name} is not a valid URL"
    if "@" in parts.netloc:
        return (
            f"{PREFIX}{name} must not carry user-info (user:password@): credentials belong in "
            "their own settings (not shown here)"
        )
    if parts.scheme not in ("http", "https") or not host:
        scheme = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        return f"{PREFIX}{name} must be an http(s) URL with a host, got {scheme}"
    if parts.scheme == "http" and not is_loopback(host):
        return f"{PREFIX}{name} must use https (plain http is allowed only on loopback)"
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ledger_url_problem(url: str) -> str | None:
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        return f"{PREFIX}LEDGER_URL must be sqlite:///<path> or postgresql://..."
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path.startswith(":memory:") or path.startswith("file:"):
            return (
                f"{PREFIX}LEDGER_URL must name a file: a ledger in memory forgets every delivery "
                "at a restart, and the next start sends everything again"
            )
        return None
    try:
        parts = urlsplit(url)
        password = parts.password is not None or any(
            key == "password" for key, _ in parse_qsl(parts.query)
        )
    except ValueError:
        return (
            f"{PREFIX}LEDGER_URL is not a valid PostgreSQL URL (not shown: it may hold a password)"
        )
    if password:
        return (
            f"{PREFIX}LEDGER_URL must not carry a password (not shown): libpq reads it from "
            "PGPASSWORD or PGPASSFILE (postgresql://user@host/db is fine)"
        )
    return None


TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


def topic_problem(name: str, topic: str) -> str | None:
    """Kafka's own rule for topic names (a regex subscription is not supported: it would take
    in the dead-letter topic too)."""
    if TOPIC_NAME.fullmatch(topic) is None or topic in (".", ".."):
        return f"{PREFIX}{name} {topic!r} is not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)"
    return None


def schema_problem(name: str, path: Path) -> str | None:
    """The schema file must be an Avro schema; the service reads it at start."""
    if not path.is_file():
        return f"{PREFIX}{name}: no schema file at {path}"
    try:
        fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError, fastavro.schema.SchemaParseException) as exc:
        return f"{PREFIX}{name}: {path} is not an Avro schema ({type(exc).__name__})"
    return None


def currency_problem(code: str) -> str | None:
    if code in ACTIVE_CURRENCIES:
        return None
    return f"{PREFIX}CUSTOBAR_DEFAULT_CURRENCY must be an ISO 4217 code such as EUR, got {code!r}"


def company_problem(company: str) -> str | None:
    """Custobar's company-specific fields are `<COMPANY>__<key>`: the transform's own rule."""
    try:
        company_prefix(company)
    except ValueError:
        return (
            f"{PREFIX}CUSTOBAR_COMPANY must be Custobar's company short name, letters, digits "
            f"and _ only (it prefixes field names such as COMPANY__channel), got {company!r}"
        )
    return None


def site_key_problem(site_key: str) -> str | None:
    if UUID.fullmatch(site_key):
        return None
    return (
        f"{PREFIX}NUDGIFY_SITE_KEY must be the site's UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx) "
        "as Nudgify's dashboard shows it"
    )


def log_level_problem(level: str) -> str | None:
    if level in LOG_LEVELS:
        return None
    return f"{PREFIX}LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {level!r}"


_QUIET = logging.getLogger("consumer.config.librdkafka-check")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


def librdkafka_problems(kafka: Mapping[str, str], secrets: Iterable[str]) -> list[str]:
    """What librdkafka itself refuses in the passthrough settings (an unknown property, a bad
    value, a SASL mechanism without credentials, an unreadable CA file), found by building a
    consumer and the dead-letter producer the way the service will. librdkafka checks at
    construction; no broker is contacted (no bootstrap servers are given) and it takes
    milliseconds. The texts are scrubbed of the secret settings' values."""
    redactor = Redactor(secrets)
    problems: list[str] = []
    consumer_fixed = {
        "group.id": "order-consumer-settings-check",
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.auto.offset.store": False,
        "enable.auto.commit": True,
    }
    # What consumer.dead_letter.producer_config fixes (the rest of it librdkafka accepts).
    producer_fixed = {"enable.idempotence": True, "acks": "all"}
    for role, fixed in (("consumer", consumer_fixed), ("dead-letter producer", producer_fixed)):
        try:
            if role == "consumer":
                Consumer({**kafka, **fixed, "logger": _QUIET}).close()
            else:
                Producer({**kafka, **fixed, "logger": _QUIET})
        except KafkaException as exc:
            text = exc.args[0].str() if exc.args else str(exc)
            problems.append(_kafka_problem(role, redactor.scrub(text, limit=500)))
        except (TypeError, ValueError) as exc:  # a Python-level property given a string
            problems.append(_kafka_problem(role, redactor.scrub(str(exc), limit=500)))
        if problems:
            break  # the producer would only repeat the consumer's complaint
    return problems


def _kafka_problem(role: str, text: str) -> str:
    return f"{PREFIX}KAFKA__ settings refused by librdkafka (for the {role}): {text}"
