from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from consumer.devenv.postgres import create_schema, drop_schema
from consumer.ledger import Ledger
from consumer.ledger.postgres import PostgresLedger
from consumer.ledger.sqlite import SqliteLedger


class OpenedInTestLoop:
    """A ledger opened at its first call, inside that call's event loop.

    Each test runs its own `asyncio.run`, and an asyncio connection belongs to the loop it was
    made in; a call from another loop opens the ledger anew. Concurrent first calls share one
    opening.
    """

    def __init__(self, open_: Callable[[], Awaitable[Ledger]]) -> None:
        self._open = open_
        self._opening: asyncio.Future[Ledger] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _current(self) -> Ledger:
        loop = asyncio.get_running_loop()
        if self._opening is None or self._loop is not loop:
            previous, self._loop = self._opening, loop
            self._opening = asyncio.ensure_future(self._open())
            if previous is not None and previous.done() and not previous.exception():
                await previous.result().close()
        return await self._opening

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await getattr(await self._current(), name)(*args, **kwargs)

        return call

    async def close(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None and opening.done() and not opening.exception():
            await opening.result().close()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path) -> Iterator[Ledger]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        sqlite = SqliteLedger.open(str(tmp_path / "ledger.sqlite3"))
        yield sqlite
        asyncio.run(sqlite.close())
        return
    server: str = request.getfixturevalue("postgres_url")
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"  # a fresh schema per test: isolated, fast
    url = create_schema(server, schema)
    postgres = OpenedInTestLoop(lambda: PostgresLedger.open(url))
    yield postgres
    asyncio.run(postgres.close())
    drop_schema(server, schema)
