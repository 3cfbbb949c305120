"""The command line without a broker: `status` and `rewind` never create a ledger, and bad
settings or an impossible ledger path give a plain message, not a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from consumer.__main__ import main
from consumer.devenv.postgres import create_schema, drop_schema
from consumer.errors import LedgerError
from consumer.ledger import ClaimRequest
from consumer.ledger.postgres import PostgresLedger
from consumer.ledger.sqlite import SqliteLedger
from tests.unit.test_config import BASE

UNREACHABLE = "127.0.0.1:9"  # nothing listens: a test that contacted Kafka would hang or fail


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for key in list(os.environ):
        if key.startswith("CONSUMER_"):
            monkeypatch.delenv(key)
    for key, value in BASE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CONSUMER_BOOTSTRAP_SERVERS", UNREACHABLE)
    monkeypatch.setenv("CONSUMER_LOG_FORMAT", "json")
    yield monkeypatch
    logging.getLogger().handlers.clear()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def filled_sqlite_ledger(path: Path) -> None:
    async def fill() -> None:
        ledger = SqliteLedger.open(str(path))
        await ledger.claim("nibble", [ClaimRequest("SO-1", "h1")], owner="me", lease_s=60)
        await ledger.mark_delivered("nibble", [ClaimRequest("SO-1", "h1")], owner="me")
        await ledger.close()

    asyncio.run(fill())


@pytest.mark.parametrize("command", [["status"], ["rewind", "earliest"]])
def test_a_mistyped_sqlite_ledger_path_is_reported_and_not_created(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo-dir" / "ledger.sqlite3"
    env.setenv("CONSUMER_LEDGER_URL", f"sqlite:///{missing}")
    code, out, err = run_cli(capsys, *command)
    assert code == 1
    assert f"the SQLite ledger {missing} does not exist" in err
    assert "Traceback" not in err
    assert out == ""
    assert not missing.parent.exists()


def test_status_reads_an_existing_sqlite_ledger(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "ledger.sqlite3"
    filled_sqlite_ledger(path)
    env.setenv("CONSUMER_LEDGER_URL", f"sqlite:///{path}")
    code, out, err = run_cli(capsys, "status")
    assert code == 0, err
    assert json.loads(out)["destinations"]["nibble"]["delivered"] == 1


def test_status_of_a_database_file_that_is_no_ledger_says_so_and_adds_no_table(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "other.sqlite3"
    sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
    env.setenv("CONSUMER_LEDGER_URL", f"sqlite:///{path}")
    code, _, err = run_cli(capsys, "status")
    assert code == 1
    assert "is not a ledger" in err
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == [("other",)]


def test_status_of_a_postgres_database_without_the_schema_says_so_and_creates_nothing(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    schema = f"cli_test_{uuid.uuid4().hex[:12]}"
    url = create_schema(postgres_url, schema)
    try:
        env.setenv("CONSUMER_LEDGER_URL", url)
        code, _, err = run_cli(capsys, "status")
        assert code == 1
        assert "no ledger schema in" in err
        with psycopg.connect(postgres_url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s", (schema,)
            ).fetchone()
        assert tables == (0,)
    finally:
        drop_schema(postgres_url, schema)


def test_status_reads_an_existing_postgres_ledger(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    schema = f"cli_test_{uuid.uuid4().hex[:12]}"
    url = create_schema(postgres_url, schema)

    async def fill() -> None:
        ledger = await PostgresLedger.open(url)
        await ledger.mark_dead_lettered("custobar", "SO-2", "h1", "refused", owner="me")
        await ledger.close()

    try:
        asyncio.run(fill())
        env.setenv("CONSUMER_LEDGER_URL", url)
        code, out, err = run_cli(capsys, "status")
        assert code == 0, err
        assert json.loads(out)["destinations"]["custobar"]["dead_lettered"] == 1
    finally:
        drop_schema(postgres_url, schema)


def test_a_ledger_path_that_cannot_be_created_is_a_clean_ledger_error() -> None:
    with pytest.raises(LedgerError, match=r"cannot create the SQLite ledger /proc/nope/x\.sqlite3"):
        SqliteLedger.open("/proc/nope/x.sqlite3")


def test_the_service_with_an_impossible_ledger_path_stops_with_a_message_not_a_traceback(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The path after `sqlite:///` is relative to the working directory: from `/` this is
    /proc/nope/x.sqlite3, which cannot be created."""
    env.chdir("/")
    env.setenv("CONSUMER_LEDGER_URL", "sqlite:///proc/nope/x.sqlite3")
    code, _, err = run_cli(capsys, "run")
    assert code == 1
    assert "cannot create the SQLite ledger proc/nope/x.sqlite3" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["run"], ["status"], ["rewind", "earliest"]])
def test_an_unknown_log_level_is_a_configuration_error_not_a_traceback(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    env.setenv("CONSUMER_LOG_LEVEL", "verbose")
    code, _, err = run_cli(capsys, *command)
    assert code == 2
    assert "configuration error" in err
    assert "LOG_LEVEL must be one of debug, info, warning, error" in err
    assert "Traceback" not in err


def test_rewind_refuses_a_negative_partition_before_contacting_kafka(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "ledger.sqlite3"
    filled_sqlite_ledger(path)
    env.setenv("CONSUMER_LEDGER_URL", f"sqlite:///{path}")
    code, out, err = run_cli(capsys, "rewind", "earliest", "--partition", "-1")
    assert code == 2
    assert "rewind: partition numbers start at 0, got -1" in err
    assert out == ""


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("offset:99999999999999999999999", "beyond any Kafka offset"),
        ("time:0001-01-01T00:00:00+00:00", "after 1970-01-01"),
        ("offset:١٢", "unknown rewind target"),  # digits, but not ASCII ones
    ],
)
def test_a_rewind_target_kafka_cannot_take_is_refused_with_a_reason(
    target: str, problem: str
) -> None:
    from consumer.rewind import parse_target

    with pytest.raises(ValueError, match=problem):
        parse_target(target)


def test_a_sqlite_ledger_in_a_missing_directory_tree_is_refused_not_built(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="cannot create the SQLite ledger"):
        SqliteLedger.open(str(tmp_path / "typo" / "deeper" / "ledger.sqlite3"))
    assert not (tmp_path / "typo").exists()
