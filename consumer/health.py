"""Liveness, readiness and metrics over plain HTTP (no framework: three read-only routes).

- `/health/live`  200 while the loop runs.
- `/health/ready` 200 when partitions are assigned and no destination is paused; otherwise 503,
  with each destination's state and the reason (e.g. "Nibble refused the credentials").
- `/metrics`      Prometheus text: outcomes per destination, records in flight, ledger figures
  including the open window (claims never completed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from consumer.logs import get_logger

log = get_logger(__name__)
Snapshot = Callable[[], Awaitable[dict[str, Any]]]


def render_metrics(snapshot: dict[str, Any]) -> str:
    lines = [
        "# TYPE order_consumer_outcomes_total counter",
        *(
            f'order_consumer_outcomes_total{{destination="{d}",outcome="{o}"}} {n}'
            for d, outcomes in snapshot["outcomes"].items()
            for o, n in outcomes.items()
        ),
        "# TYPE order_consumer_in_flight gauge",
        f"order_consumer_in_flight {snapshot['in_flight']}",
        "# TYPE order_consumer_destination_paused gauge",
        *(
            f'order_consumer_destination_paused{{destination="{d}"}} {int(h["state"] == "paused")}'
            for d, h in snapshot["destinations"].items()
        ),
        "# TYPE order_consumer_ledger_rows gauge",
        *(
            f'order_consumer_ledger_rows{{state="{k}"}} {v}'
            for k, v in snapshot["ledger"].items()
            if k != "open_window"
        ),
        "# HELP order_consumer_open_window Claims taken over after a crash: possibly sent twice.",
        "# TYPE order_consumer_open_window gauge",
        f"order_consumer_open_window {snapshot['ledger']['open_window']}",
    ]
    return "\n".join(lines) + "\n"


class HealthServer:
    def __init__(self, snapshot: Snapshot, *, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104
        self._snapshot = snapshot
        self._port = port
        self._host = host
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)
        log.info("health.listening", port=self._port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)).strip():
                pass  # headers are not needed
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            status, content_type, body = await self._route(path)
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/health/live":
            return "200 OK", "application/json", b'{"status": "live"}'
        snapshot = await self._snapshot()
        if path == "/health/ready":
            ready = snapshot["assigned"] and all(
                h["state"] != "paused" for h in snapshot["destinations"].values()
            )
            body = json.dumps({"ready": ready, **snapshot}).encode()
            return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4", render_metrics(snapshot).encode()
        return "404 Not Found", "text/plain", b"not found"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
