from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from consumer.ledger import Ledger
from consumer.ledger.sqlite import SqliteLedger


@pytest.fixture
def ledger(tmp_path) -> Iterator[Ledger]:  # type: ignore[no-untyped-def]
    ledger = SqliteLedger.open(str(tmp_path / "ledger.sqlite3"))
    yield ledger
    asyncio.run(ledger.close())
