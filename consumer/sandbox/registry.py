"""A Confluent-compatible Schema Registry subset, strict enough for Confluent's own client
(`SchemaRegistryClient` + `AvroSerializer`) to register and resolve schemas with references:

    GET  /subjects                                  subject names
    POST /subjects/{subject}/versions               {"schema", "schemaType"?, "references"?}
                                                    → {"id"}; 422 (42201) if a reference is
                                                    unknown or the schema does not parse with them
    GET  /subjects/{subject}/versions               version numbers
    GET  /subjects/{subject}/versions/{version}     {"subject", "version", "id", "schema",
                                                    "references"}; `latest` or -1 too
    GET  /schemas/ids/{id}                          {"schema", "references"}

Ids are global and stable: the same schema with the same references registers to the same id.
Mounted under `/registry` on the vendor sandbox (no authentication), or served alone by
`build_registry_app(auth)` to play a registry behind basic auth or a bearer token; HTTPS and
client certificates are the server's part (`control.run_app_in_thread(..., tls=...)`).
"""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

import fastavro
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.sandbox.state import SandboxState

MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "message": message}, status, media_type=MEDIA_TYPE)


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """What the registry accepts: `user:secret` as HTTP basic auth, or a bearer token."""

    user_info: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)

    def allows(self, authorization: str) -> bool:
        expected = []
        if self.user_info is not None:
            expected.append("Basic " + base64.b64encode(self.user_info.encode()).decode())
        if self.bearer_token is not None:
            expected.append(f"Bearer {self.bearer_token}")
        return any(hmac.compare_digest(authorization, e) for e in expected)


@dataclass(frozen=True, slots=True)
class Stored:
    text: str
    schema_type: str
    references: tuple[tuple[str, str, int], ...]  # (name, subject, version)

    def body(self) -> dict[str, Any]:
        refs = [{"name": n, "subject": s, "version": v} for n, s, v in self.references]
        return {"schema": self.text, "schemaType": self.schema_type, "references": refs}


class RegistryApi:
    """Ids are global and stable: the same schema and references register to the same id."""

    def __init__(self, state: SandboxState, auth: RegistryAuth | None = None) -> None:
        self._book = state.book("registry")
        self._auth = auth
        self._by_id: dict[int, Stored] = {}
        self._ids: dict[Stored, int] = {}
        self._subjects: dict[str, list[int]] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/subjects", self.subjects, methods=["GET"]),
            Route("/subjects/{subject}/versions", self.register, methods=["POST"]),
            Route("/subjects/{subject}/versions", self.versions, methods=["GET"]),
            Route("/subjects/{subject}/versions/{version}", self.version, methods=["GET"]),
            Route("/schemas/ids/{schema_id:int}", self.schema, methods=["GET"]),
        ]

    def _refused(self, request: Request) -> Response | None:
        if self._auth is None or self._auth.allows(request.headers.get("authorization", "")):
            return None
        return _unavailable()

    async def subjects(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        return JSONResponse(sorted(self._subjects), media_type=MEDIA_TYPE)

    async def register(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            body = await request.json()
            text = body["schema"]
            canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
            references = tuple(
                (str(r["name"]), str(r["subject"]), int(r["version"]))
                for r in body.get("references") or ()
            )
        except (ValueError, KeyError, TypeError):
            return _error(422, 42201, "Invalid schema")
        stored = Stored(text, body.get("schemaType") or "AVRO", references)
        if stored.schema_type == "AVRO" and (problem := self._unparseable(canonical, references)):
            return _error(422, 42201, f"Invalid schema: {problem}")
        schema_id = self._ids.setdefault(
            Stored(canonical, stored.schema_type, references), len(self._ids) + 1
        )
        self._by_id.setdefault(schema_id, stored)
        versions = self._subjects.setdefault(request.path_params["subject"], [])
        if schema_id not in versions:
            versions.append(schema_id)
        return JSONResponse({"id": schema_id}, media_type=MEDIA_TYPE)

    def _unparseable(self, text: str, references: tuple[tuple[str, str, int], ...]) -> str | None:
        """Why the schema does not parse with its references (dependencies first), if it
        does not: what the real registry checks before it hands out an id."""
        named: dict[str, Any] = {}
        seen: set[tuple[str, int]] = set()

        def parse(schema_text: str, refs: tuple[tuple[str, str, int], ...]) -> None:
            for _name, subject, version in refs:
                if (subject, version) in seen:
                    continue
                seen.add((subject, version))
                found = self._lookup(subject, version)
                if found is None:
                    raise LookupError(f"reference {subject} version {version} not found")
                parse(self._by_id[found[1]].text, self._by_id[found[1]].references)
            fastavro.parse_schema(json.loads(schema_text), named_schemas=named)

        try:
            parse(text, references)
        except Exception as exc:  # fastavro raises many types on a bad schema
            return f"{type(exc).__name__}: {exc}"
        return None

    def _lookup(self, subject: str, version: str | int) -> tuple[int, int] | None:
        """(version number, schema id) of a subject's version, `latest`/-1 being the last."""
        versions = self._subjects.get(subject)
        if not versions:
            return None
        number = len(versions) if str(version) in ("latest", "-1") else int(version)
        return (number, versions[number - 1]) if 1 <= number <= len(versions) else None

    async def versions(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        subject = request.path_params["subject"]
        if subject not in self._subjects:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        numbers = list(range(1, len(self._subjects[subject]) + 1))
        return JSONResponse(numbers, media_type=MEDIA_TYPE)

    async def version(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if (failure := await self._book.injected_failure(request, _unavailable)) is not None:
            return failure
        subject, version = request.path_params["subject"], request.path_params["version"]
        if subject not in self._subjects:
            return _error(404, 40401, f"Subject '{subject}' not found.")
        try:
            found = self._lookup(subject, version)
        except ValueError:
            return _error(422, 42202, "The specified version is not a valid version id.")
        if found is None:
            return _error(404, 40402, f"Version {version} not found.")
        number, schema_id = found
        body = {"subject": subject, "version": number, "id": schema_id}
        return JSONResponse({**body, **self._by_id[schema_id].body()}, media_type=MEDIA_TYPE)

    async def schema(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if (failure := await self._book.injected_failure(request, _unavailable)) is not None:
            return failure
        schema_id = request.path_params["schema_id"]
        stored = self._by_id.get(schema_id)
        if stored is None:
            return _error(404, 40403, f"Schema {schema_id} not found")
        return JSONResponse(stored.body(), media_type=MEDIA_TYPE)


def build_registry_app(auth: RegistryAuth | None = None) -> Starlette:
    """The registry alone, at the root like a real one, optionally behind authentication."""
    return Starlette(routes=RegistryApi(SandboxState(None, 0), auth).routes())


def _unavailable() -> Response:
    return _error(401, 40101, "Unauthorized")
