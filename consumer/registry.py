"""The Confluent Schema Registry client: the writer schema of a Confluent wire-format record, by
its schema id, with the named types of its references, fetched once and kept parsed (schema ids
and subject versions never change). `decode` is its only user.

    GET /schemas/ids/{id}                          {"schema": ..., "references": [...]}
    GET /subjects/{subject}/versions/{version}     each reference, recursively (deleted too:
                                                   records written before a soft delete decode)

References are parsed first, in dependency order and each once, into one `named_schemas` map
that the writer schema is then parsed with (fastavro), so a shared `Customer` record registered
under its own subject resolves. Credentials, a private CA and a client certificate come from
`RegistrySettings`.

Only "this id does not exist" (or its schema is not Avro) is the record's fault; the pipeline
dead-letters it. Anything else is the registry's or the settings' problem: the record waits
(never dead-lettered) while the client retries, and `health` says why, in the workers' terms:
`retrying` (network, timeout, 5xx, a garbled answer: backoff) or `paused` (401/403, a TLS
certificate that does not verify, a redirect, a wrong URL: logged as an error, retried every
`credentials_retry_s`, and only a fixed setting helps).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import fastavro
import httpx

from consumer.config import PREFIX, RegistrySettings, Settings
from consumer.deliver.retry import Backoff
from consumer.errors import (
    ConfigError,
    RegistryError,
    RegistryRefusedError,
    RegistryUnavailableError,
    UndecodableError,
)
from consumer.logs import get_logger

log = get_logger(__name__)

SCHEMA_NOT_FOUND = 40403  # a plain 404 is a wrong registry URL: wait for a fix, never dead-letter
SUBJECT_NOT_FOUND, VERSION_NOT_FOUND = 40401, 40402
MAX_REFERENCES = 256  # per writer schema, all levels: a runaway reference graph stops here
MEDIA_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass(slots=True)
class RegistryHealth:
    """What the client waits for: `ok`, `retrying` (may pass by itself) or `paused` (someone
    must fix a setting; readiness should say so with `reason`)."""

    state: str = "ok"
    reason: str = ""
    since: float = field(default_factory=time.time)

    def set(self, state: str, reason: str = "") -> None:
        if state != self.state or reason != self.reason:
            self.state, self.reason, self.since = state, reason, time.time()


@dataclass(frozen=True, slots=True)
class Reference:
    name: str
    subject: str
    version: int


@dataclass(frozen=True, slots=True)
class Registered:
    """A schema as the registry returned it: text, not yet parsed, and what it references."""

    text: str
    references: tuple[Reference, ...] = ()


class SchemaRegistry:
    """Writer schemas by id, parsed once; one fetch per id however many records wait for it."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        retry_max_s: float = 30.0,
        credentials_retry_s: float = 60.0,
    ) -> None:
        self.client = client
        self.health = RegistryHealth()
        self.name = _display_url(str(client.base_url))
        self._parsed: dict[int, Any] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._versions: dict[tuple[str, int], Registered] = {}
        self._backoff = Backoff(initial_s=0.2, maximum_s=retry_max_s)
        self._credentials_retry_s = credentials_retry_s

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
        """Until the registry answers: the record waits, it is never blamed for the registry."""
        attempt = 0
        while True:
            try:
                parsed = await self._resolve(schema_id)
            except RegistryError as exc:
                await self._wait(exc, attempt, schema_id)
                attempt += 1
                continue
            if self.health.state != "ok":
                log.info("registry.recovered", registry=self.name, schema_id=schema_id)
                self.health.set("ok")
            return parsed

    async def _wait(self, exc: RegistryError, attempt: int, schema_id: int) -> None:
        if isinstance(exc, RegistryRefusedError):
            delay = self._credentials_retry_s
            self.health.set("paused", str(exc))
            log.error("registry.refused", registry=self.name, status=exc.status, error=str(exc),
                      schema_id=schema_id, retry_in_s=delay)  # fmt: skip
        else:
            delay = self._backoff.delay(attempt)
            self.health.set("retrying", str(exc))
            log.warning("registry.unavailable", registry=self.name, status=exc.status,
                        error=str(exc), schema_id=schema_id,
                        retry_in_s=round(delay, 3))  # fmt: skip
        await asyncio.sleep(delay)

    async def _resolve(self, schema_id: int) -> Any:
        body = await self._get(f"/schemas/ids/{schema_id}", {SCHEMA_NOT_FOUND},
                               missing=f"unknown schema id {schema_id}")  # fmt: skip
        what = f"schema id {schema_id}"
        top = _registered(body, what)
        dependencies = await self._closure(top.references, what)
        named: dict[str, Any] = {}
        try:
            for registered in dependencies:
                fastavro.parse_schema(json.loads(registered.text), named_schemas=named)
            return fastavro.parse_schema(json.loads(top.text), named_schemas=named)
        except Exception as exc:  # fastavro raises many types on a bad schema
            raise UndecodableError(f"{what} is not Avro: {type(exc).__name__}: {exc}") from exc

    async def _closure(self, references: Iterable[Reference], what: str) -> list[Registered]:
        """Every schema the references reach, dependencies first, each (subject, version) once
        (a shared `Address` referenced by `Customer` and by the order is parsed once)."""
        ordered: list[Registered] = []
        seen: set[tuple[str, int]] = set()

        async def visit(refs: Iterable[Reference]) -> None:
            for ref in refs:
                if (ref.subject, ref.version) in seen:
                    continue
                seen.add((ref.subject, ref.version))
                if len(seen) > MAX_REFERENCES:
                    raise UndecodableError(f"{what} references more than {MAX_REFERENCES} schemas")
                registered = await self._version(ref, what)
                await visit(registered.references)
                ordered.append(registered)

        await visit(references)
        return ordered

    async def _version(self, ref: Reference, what: str) -> Registered:
        key = (ref.subject, ref.version)
        if (cached := self._versions.get(key)) is not None:
            return cached
        path = f"/subjects/{quote(ref.subject, safe='')}/versions/{ref.version}?deleted=true"
        missing = f"{what}: reference {ref.name} ({ref.subject} version {ref.version}) not found"
        body = await self._get(path, {SUBJECT_NOT_FOUND, VERSION_NOT_FOUND}, missing=missing)
        registered = self._versions[key] = _registered(body, f"{ref.subject} v{ref.version}")
        return registered

    async def _get(self, path: str, not_found: set[int], *, missing: str) -> dict[str, Any]:
        """One GET, its outcome sorted into the error tree; a dict body on success."""
        try:
            response = await self.client.get(path)
        except httpx.TimeoutException as exc:
            raise RegistryUnavailableError(f"timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            if (tls := _tls_error(exc)) is not None:
                raise RegistryRefusedError(f"TLS with the schema registry failed: {tls}") from exc
            raise RegistryUnavailableError(f"connection failed: {type(exc).__name__}") from exc
        status = response.status_code
        if status == 200:
            try:
                body = response.json()
            except ValueError as exc:
                raise RegistryUnavailableError("HTTP 200 without a JSON body", status=200) from exc
            if not isinstance(body, dict):
                raise RegistryUnavailableError("HTTP 200 without a JSON object", status=200)
            return body
        if status == 404 and _error_code(response) in not_found:
            raise UndecodableError(missing)
        if status in (401, 403):
            raise RegistryRefusedError(
                f"the schema registry refused the credentials (HTTP {status})", status=status
            )
        if status in (408, 425, 429) or status >= 500:
            raise RegistryUnavailableError(f"HTTP {status}", status=status)
        raise RegistryRefusedError(
            f"HTTP {status} from the schema registry: is {PREFIX}SCHEMA_REGISTRY_URL right?",
            status=status,
        )


def _registered(body: dict[str, Any], what: str) -> Registered:
    schema_type = body.get("schemaType", "AVRO")
    if schema_type != "AVRO":
        raise UndecodableError(f"{what} is a {schema_type} schema, not Avro")
    text = body.get("schema")
    if not isinstance(text, str):
        raise RegistryUnavailableError(f"{what}: the registry's answer has no schema", status=200)
    try:
        references = tuple(
            Reference(str(r["name"]), str(r["subject"]), int(r["version"]))
            for r in body.get("references") or ()
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UndecodableError(f"{what} has malformed references") from exc
    return Registered(text, references)


def _error_code(response: httpx.Response) -> int | None:
    try:
        code = response.json().get("error_code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, int) else None


def _tls_error(exc: BaseException) -> str | None:
    """The TLS failure behind a transport error (untrusted certificate, a client certificate
    the server refused), if that is what it was: a setting to fix, not a network blip."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return seen.reason or type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    return None


def _display_url(url: str) -> str:
    """The registry as logs name it: never a user:password@ part of the URL."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")


def build_registry(settings: Settings) -> SchemaRegistry | None:
    """The registry client of the Confluent wire format; None when records are schemaless."""
    if not settings.schema_registry_url or settings.avro_format != "confluent":
        return None
    d = settings.delivery
    client = build_registry_client(settings.schema_registry_url, settings.registry,
                                   timeout_s=d.http_timeout_s)  # fmt: skip
    return SchemaRegistry(client, retry_max_s=d.retry_max_s,
                          credentials_retry_s=d.credentials_retry_s)  # fmt: skip


def build_registry_client(
    url: str, registry: RegistrySettings, *, timeout_s: float
) -> httpx.AsyncClient:
    """Basic auth (`user:secret`) or a bearer token, and TLS verification that is always on:
    against `ca_location` if given, else the public roots; a client certificate if given."""
    headers = {"accept": f"{MEDIA_TYPE}, application/json", "user-agent": "order-consumer/0.1"}
    auth = None
    if registry.basic_auth_user_info is not None:
        user, _, password = registry.basic_auth_user_info.reveal().partition(":")
        auth = httpx.BasicAuth(user, password)
    if registry.bearer_token is not None:
        headers["authorization"] = f"Bearer {registry.bearer_token.reveal()}"
    return httpx.AsyncClient(
        base_url=url,
        auth=auth,
        headers=headers,
        verify=_tls_context(registry),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        follow_redirects=False,  # a redirect would carry the credentials elsewhere
    )


def _tls_context(registry: RegistrySettings) -> ssl.SSLContext:
    name = f"{PREFIX}SCHEMA_REGISTRY_"
    ca = registry.ca_location
    try:  # no CA given: the same roots as the vendor clients (httpx's: certifi, SSL_CERT_FILE)
        context = ssl.create_default_context(cafile=ca) if ca else httpx.create_ssl_context()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{name}CA_LOCATION: cannot load {ca}: {exc}") from exc
    if registry.certificate_location is not None:
        try:
            context.load_cert_chain(registry.certificate_location, registry.key_location)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{name}CERTIFICATE_LOCATION / {name}KEY_LOCATION: cannot load the client "
                f"certificate and key: {exc}"
            ) from exc
    return context
