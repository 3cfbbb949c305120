"""A Confluent-compatible Schema Registry subset: register a schema under a subject, fetch a
schema by id. Enough for the consumer (which only fetches by id) and for producing test data."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.sandbox.state import SandboxState

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status, media_type=MEDIA_TYPE)


class RegistryApi:
    """Ids are global and stable: the same schema text registers to the same id."""

    def __init__(self, state: SandboxState) -> None:
        self._book = state.book("registry")
        self._by_id: dict[int, str] = {}
        self._ids: dict[str, int] = {}
        self._subjects: dict[str, list[int]] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/subjects", self.subjects, methods=["GET"]),
            Route("/subjects/{subject}/versions", self.register, methods=["POST"]),
            Route("/schemas/ids/{schema_id:int}", self.schema, methods=["GET"]),
        ]

    async def subjects(self, request: Request) -> Response:
        return JSONResponse(sorted(self._subjects), media_type=MEDIA_TYPE)

    async def register(self, request: Request) -> Response:
        try:
            text = (await request.json())["schema"]
            canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
        except (ValueError, KeyError, TypeError):
            return _error(422, 42201, "Invalid schema")
        schema_id = self._ids.setdefault(canonical, len(self._ids) + 1)
        self._by_id[schema_id] = text
        versions = self._subjects.setdefault(request.path_params["subject"], [])
        if schema_id not in versions:
            versions.append(schema_id)
        return JSONResponse({"id": schema_id}, media_type=MEDIA_TYPE)

    async def schema(self, request: Request) -> Response:
        if (failure := await self._book.injected_failure(request, _unavailable)) is not None:
            return failure
        schema_id = request.path_params["schema_id"]
        text = self._by_id.get(schema_id)
        if text is None:
            return _error(404, 40403, f"Schema {schema_id} not found")
        return JSONResponse({"schema": text}, media_type=MEDIA_TYPE)


def _unavailable() -> Response:
    return _error(401, 40101, "Unauthorized")
