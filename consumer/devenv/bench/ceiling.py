"""Run B, the in-process CPU ceiling: the same records through the service's own per-order work,
in one process, with no network: decode → per destination: transform → payload hash → batch →
the vendor client's `send`, whose request body becomes bytes (httpx encodes it) and is answered
200 by an `httpx.MockTransport`. No ledger, no Kafka, no sockets: what is left is the CPU cost
of turning a record into what is sent, the most the service could do on one core.

This file runs as a script (`python ceiling.py VALUES OUT`) against whichever commit's
`consumer` package comes first on PYTHONPATH (the bench's baseline runs it against an old
commit), so it imports nothing of the bench and copes with both APIs it has met:
`Decoder.decode_now` (sync) or only the async `Decoder.decode`, and `build_client` with or
without `transport`.
The environment carries the same CONSUMER_* settings as the service's runs (batch sizes, keys).

Writes JSON: orders, wall and CPU seconds, requests and body bytes per vendor, and each order's
key per vendor as it appears in a request body (None: the destination skipped it); the bench
compares these keys with what the sink received.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

KEY_FIELDS = {"nibble": "order_number", "nudgify": "order_id", "custobar": "sale_external_id"}
"""The field of a request's entry that names its order, per vendor (what the sink records)."""
ENTRIES = {"nibble": "sales", "nudgify": "orders", "custobar": "sales"}
SUCCESS_BODIES: dict[str, Any] = {
    "nibble": {"success": True},
    "nudgify": {"message": "Request successfully saved.", "data": []},
    "custobar": {"response": "ok"},
}
WARM_UP = 300  # records run once before timing: first-call costs are not per-order costs
LENGTH = struct.Struct(">I")
IDEMPOTENCY_SECRET = b"bench-ceiling-secret-0123456789"


def write_values(path: Path, values: Sequence[bytes]) -> None:
    """Record values, length-prefixed, for the ceiling to read back."""
    with path.open("wb") as out:
        for value in values:
            out.write(LENGTH.pack(len(value)))
            out.write(value)


def read_values(path: Path) -> list[bytes]:
    data = path.read_bytes()
    values, at = [], 0
    while at < len(data):
        (size,) = LENGTH.unpack_from(data, at)
        at += LENGTH.size
        values.append(data[at : at + size])
        at += size
    return values


def body_keys(vendor: str, body: Any) -> list[Any]:
    """The order keys in one request body, each once (a Custobar sale has a row per line)."""
    entries = body.get(ENTRIES[vendor]) if isinstance(body, dict) else None
    field = KEY_FIELDS[vendor]
    keys = [entry.get(field) for entry in entries or () if isinstance(entry, dict)]
    return list(dict.fromkeys(keys))


class Capture:
    """The mock transport's side: count requests and body bytes per vendor path."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.body_bytes: dict[str, int] = {}
        self.reset()

    def reset(self) -> None:
        self.requests = dict.fromkeys(KEY_FIELDS, 0)
        self.body_bytes = dict.fromkeys(KEY_FIELDS, 0)

    def handler(self, vendor: str) -> Callable[[Any], Any]:
        import httpx

        answer = json.dumps(SUCCESS_BODIES[vendor]).encode()

        def respond(request: httpx.Request) -> httpx.Response:
            self.requests[vendor] += 1
            self.body_bytes[vendor] += len(request.content)
            return httpx.Response(200, content=answer,
                                  headers={"content-type": "application/json"})  # fmt: skip

        return respond


def _mock_clients(capture: Capture) -> None:
    """Make the composition root's `build_client` hand out clients answered by the capture."""
    import httpx

    from consumer import bootstrap

    real: Callable[..., httpx.AsyncClient] = getattr(bootstrap, "build_client")  # noqa: B009
    takes_transport = "transport" in inspect.signature(real).parameters

    def build_client(base_url: str, **kwargs: Any) -> httpx.AsyncClient:
        vendor = next(v for v in KEY_FIELDS if f"/{v}" in base_url)
        transport = httpx.MockTransport(capture.handler(vendor))
        if takes_transport:
            return real(base_url, transport=transport, **kwargs)
        return httpx.AsyncClient(base_url=base_url, auth=kwargs.get("auth"), transport=transport)

    setattr(bootstrap, "build_client", build_client)  # noqa: B010 (not an export of bootstrap)


class Ceiling:
    def __init__(self) -> None:
        from consumer import bootstrap, config
        from consumer.decode import Decoder, load_schema

        settings = config.load()
        self.capture = Capture()
        _mock_clients(self.capture)
        self.destinations = bootstrap.build_destinations(settings)
        self.decoder = Decoder(reader_schema=load_schema(settings.reader_schema),
                               writer_schema=load_schema(settings.writer_schema))  # fmt: skip
        self.decode_now = getattr(self.decoder, "decode_now", None)
        self.batches: dict[str, list[Any]] = {d.name: [] for d in self.destinations}

    async def run(self, values: Sequence[bytes], keys: dict[str, list[Any]] | None) -> None:
        from consumer.deliver.destination import Outbound
        from consumer.deliver.worker import payload_hash
        from consumer.model import Payload

        for value in values:
            if self.decode_now is not None:
                order = self.decode_now(value)
            else:  # the old API: decoding was a coroutine per record
                order = await self.decoder.decode(value)
            for destination in self.destinations:
                result = destination.transform(order)
                key = None
                if isinstance(result, Payload):
                    batch = self.batches[destination.name]
                    if hasattr(Outbound, "of"):  # entries serialised once, the bytes hashed
                        batch.append(Outbound.of(order.order_number, result))
                    else:  # the old API: a hash of a sorted dump, then the body dumped again
                        payload_hash(result)
                        batch.append(Outbound(order.order_number, result.items))  # type: ignore[call-arg]
                    key = body_keys(destination.name, {ENTRIES[destination.name]: result.items})
                    if len(batch) >= destination.max_batch:
                        await self.flush(destination)
                if keys is not None:
                    keys[destination.name].append(key[0] if key else None)
        for destination in self.destinations:
            await self.flush(destination)

    async def flush(self, destination: Any) -> None:
        from consumer.deliver.http import idempotency_key

        batch = self.batches[destination.name]
        if not batch:
            return
        self.batches[destination.name] = []
        key = idempotency_key(IDEMPOTENCY_SECRET, destination.name,
                              [o.order_number for o in batch])  # fmt: skip
        await destination.send(batch, idempotency_key=key)

    async def close(self) -> None:
        for destination in self.destinations:
            await destination.aclose()


async def measure(values: Sequence[bytes]) -> dict[str, Any]:
    ceiling = Ceiling()
    try:
        await ceiling.run(values[:WARM_UP], None)
        ceiling.capture.reset()  # count the timed pass only
        keys: dict[str, list[Any]] = {d.name: [] for d in ceiling.destinations}
        wall, cpu = time.perf_counter(), time.process_time()
        await ceiling.run(values, keys)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await ceiling.close()
    return {
        "orders": len(values),
        "wall_s": wall,
        "cpu_s": cpu,
        "requests": ceiling.capture.requests,
        "body_bytes": ceiling.capture.body_bytes,
        "keys": keys,
        "api": "decode_now" if ceiling.decode_now is not None else "async decode",
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: ceiling.py VALUES_FILE OUT_JSON", file=sys.stderr)
        return 2
    result = asyncio.run(measure(read_values(Path(argv[0]))))
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
