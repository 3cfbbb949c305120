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


def test_a_huge_value_renders_cut_to_the_bound(captured) -> None:  # type: ignore[no-untyped-def]
    """A vendor's 100 MB error page logged as a value costs a bounded line, not minutes."""
    log = logs.get_logger("test")
    log.warning("delivery.rejected", body="<html>" + "x" * 20_000_000, items=list(range(10_000)))
    line = json.loads(captured.readouterr().err.strip().splitlines()[-1])
    assert line["body"].endswith("…[truncated 19995910 chars]")
    assert len(line["body"]) < 4200
    assert len(line["items"]) == 101
    assert line["items"][-1] == "…[9900 more items]"


def test_a_long_traceback_keeps_its_last_lines_and_is_scrubbed(captured) -> None:  # type: ignore[no-untyped-def]
    log = logs.get_logger("test")
    try:
        raise ValueError("x" * 50_000 + " failed for +358 40 123 4567 at fe80::1%eth0")
    except ValueError:
        log.exception("record.failed")
    line = json.loads(captured.readouterr().err.strip().splitlines()[-1])
    assert "…[truncated" in line["exception"]
    assert line["exception"].rstrip().endswith("failed for [redacted] at [redacted]")
    assert len(line["exception"]) < 13_000


def test_phone_numbers_ipv6_and_dict_keys_are_scrubbed_in_log_lines(captured) -> None:  # type: ignore[no-untyped-def]
    log = logs.get_logger("test")
    log.info("record.done", note="call +1 (555) 010-9999 from 2001:db8::42",
             counts={"leon@example.com": 1})  # fmt: skip
    err = captured.readouterr().err
    for leak in ("010-9999", "2001:db8::42", "leon@example.com"):
        assert leak not in err
