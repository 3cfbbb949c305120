"""No secret, e-mail, IP or name is ever rendered in a log line."""

from __future__ import annotations

import json
import logging

import pytest

from consumer import logs


@pytest.fixture
def captured(capsys):  # type: ignore[no-untyped-def]
    logs.configure(level="debug", fmt="json", secrets=["sup3r-s3cret-key"])
    yield capsys
    logging.getLogger().handlers.clear()


def test_sensitive_keys_and_values_are_redacted(captured) -> None:  # type: ignore[no-untyped-def]
    log = logs.get_logger("test")
    log.info("record.done", email="leon@example.com", first_name="Leon",
             note="customer leon@example.com from 92.21.8.106 used sup3r-s3cret-key",
             order_number="SO-1")  # fmt: skip
    line = json.loads(captured.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "record.done"
    assert line["order_number"] == "SO-1"
    rendered = json.dumps(line)
    for leak in ("leon@example.com", "Leon", "92.21.8.106", "sup3r-s3cret-key"):
        assert leak not in rendered


def test_tracebacks_are_scrubbed_too(captured) -> None:  # type: ignore[no-untyped-def]
    log = logs.get_logger("test")
    try:
        raise ValueError("bad email grace@example.org with key sup3r-s3cret-key")
    except ValueError:
        log.exception("record.failed")
    err = captured.readouterr().err
    assert "record.failed" in err
    assert "grace@example.org" not in err
    assert "sup3r-s3cret-key" not in err


def test_stdlib_loggers_such_as_librdkafka_go_through_the_redactor(captured) -> None:  # type: ignore[no-untyped-def]
    logging.getLogger("librdkafka.consumer").warning("SASL password=sup3r-s3cret-key at 10.1.2.3")
    err = captured.readouterr().err
    assert "sup3r-s3cret-key" not in err
    assert "10.1.2.3" not in err
