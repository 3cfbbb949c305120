"""The sink's own ceiling: many keep-alive connections posting a full Nibble batch (50 sales made
by the service's transform) at latency 0, as fast as the sink answers. Raw asyncio streams, not
httpx, so the load generator costs little next to the server; on a 2-core machine both share
the CPU, so the figure is a lower bound of what the sink can take.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson

from consumer.decode import to_order
from consumer.devenv.samples import sample_orders
from consumer.model import Payload
from consumer.transform import nibble

BATCH = 50


@dataclass(frozen=True, slots=True)
class SinkCapacity:
    requests_per_s: float
    orders_per_s: float  # requests x the batch each carried
    connections: int
    body_bytes: int


def nibble_body(orders: int = BATCH) -> bytes:
    sales: list[Any] = []
    for record in sample_orders(orders * 2, seed=99, prefix="LOAD"):
        result = nibble.sale(to_order(record), report_all_sales=True)
        if isinstance(result, Payload):
            sales.extend(result.items)
    return orjson.dumps({"sales": sales[:orders]})


async def _connection(port: int, request: bytes, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"the sink answered {head[:40]!r}")
            counts[0] += 1
    finally:
        writer.close()


async def _load(port: int, seconds: float, connections: int) -> SinkCapacity:
    body = nibble_body()
    request = (
        b"POST /nibble/v1/sales HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    counts = [0]
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(*(_connection(port, request, until, counts) for _ in range(connections)))
    elapsed = time.monotonic() - started
    rate = counts[0] / elapsed
    return SinkCapacity(rate, rate * BATCH, connections, len(body))


def sink_capacity(port: int, *, seconds: float = 3.0, connections: int = 32) -> SinkCapacity:
    """Requests per second the sink answered under load (its records are reset afterwards)."""
    return asyncio.run(_load(port, seconds, connections))
