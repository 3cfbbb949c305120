"""The Confluent Schema Registry client: the writer schema of a Confluent wire-format record, by
its schema id, fetched once and kept parsed. `decode` is its only user."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import fastavro
import httpx

from consumer.errors import UndecodableError
from consumer.logs import get_logger

log = get_logger(__name__)


class SchemaRegistry:
    """Fetches writer schemas by id; caches the parsed schema forever (ids are immutable)."""

    def __init__(self, client: httpx.AsyncClient, *, retry_max_s: float = 30.0) -> None:
        self._client = client
        self._parsed: dict[int, Any] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._retry_max_s = retry_max_s

    async def writer_schema(self, schema_id: int) -> Any:
        if (parsed := self._parsed.get(schema_id)) is not None:
            return parsed
        if (pending := self._pending.get(schema_id)) is not None:
            return await pending  # one fetch per id, however many records wait for it
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[schema_id] = future
        try:
            parsed = await self._fetch(schema_id)
            self._parsed[schema_id] = parsed
            future.set_result(parsed)
            return parsed
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it, nobody else must
            raise
        finally:
            del self._pending[schema_id]

    async def _fetch(self, schema_id: int) -> Any:
        delay = 0.2
        while True:
            try:
                response = await self._client.get(f"/schemas/ids/{schema_id}")
            except httpx.TransportError as exc:
                log.warning("registry.unreachable", schema_id=schema_id, error=type(exc).__name__)
            else:
                if response.status_code == 404 and _error_code(response) == SCHEMA_NOT_FOUND:
                    raise UndecodableError(f"unknown schema id {schema_id}")
                if response.status_code == 200:
                    try:
                        return fastavro.parse_schema(json.loads(response.json()["schema"]))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise UndecodableError(f"schema id {schema_id} is not Avro") from exc
                log.warning("registry.error", schema_id=schema_id, status=response.status_code)
            # The registry being down is not the record's fault: wait, never dead-letter.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._retry_max_s)


SCHEMA_NOT_FOUND = 40403  # a plain 404 is a wrong registry URL: wait for a fix, never dead-letter


def _error_code(response: httpx.Response) -> int | None:
    try:
        code = response.json().get("error_code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None
