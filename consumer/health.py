"""Liveness, readiness and metrics over plain HTTP (no framework: three read-only routes).

- `/health/live`  200 while the loop runs.
- `/health/ready` 200 when every destination's consumer has joined its group and its Kafka
  connection works; otherwise 503. Vendor trouble (a paused destination, the dead-letter brake)
  never makes the process unready — a paused vendor must not stall a rollout — but the body
  names each destination's state and reason, and the metrics carry it for alerts.
- `/metrics`      Prometheus text, per destination: outcomes, in flight, lag per partition,
  paused, brake, stalled partitions, oldest unfinished record, internal errors; ledger figures
  including the open window (claims taken over after a crash: possibly sent twice).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from consumer.errors import ConsumerError
from consumer.logs import get_logger

log = get_logger(__name__)
Snapshot = Callable[[], Awaitable[dict[str, Any]]]
PREFIX = "order_consumer_"


# Gauges and counters with one sample per destination: (name, kind, help, value of a lane).
PER_DESTINATION: tuple[tuple[str, str, str, Callable[[dict[str, Any]], object]], ...] = (
    ("in_flight", "gauge", "Records fetched and not settled.", lambda d: d["in_flight"]),
    ("in_flight_bytes", "gauge", "Bytes of the records in flight.",
     lambda d: d["in_flight_bytes"]),
    ("destination_paused", "gauge", "1 while the destination is paused (credentials, "
     "configuration or the dead-letter brake).", lambda d: int(d["state"] == "paused")),
    ("dead_letter_brake", "gauge", "1 while the dead-letter brake holds the destination.",
     lambda d: int(d["brake"]["tripped"])),
    ("stalled_partitions", "gauge", "Partitions whose oldest record has held the offset "
     "longer than CONSUMER_STALLED_RECORD_S.", lambda d: len(d["stalled_partitions"])),
    ("oldest_record_seconds", "gauge", "Age of the oldest unfinished record.",
     lambda d: d["oldest_record_s"]),
    ("internal_errors_total", "counter", "Unexpected errors while handling records.",
     lambda d: d["internal_errors"]),
    ("kafka_healthy", "gauge", "1 when the destination's consumer is in its group and "
     "connected.", lambda d: int(d["kafka_healthy"])),
)  # fmt: skip


def render_metrics(snapshot: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, object]]) -> None:
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.extend(f"{PREFIX}{name}{labels} {value}" for labels, value in samples)

    lanes: dict[str, dict[str, Any]] = snapshot["destinations"]
    outcomes = [
        (f'{{destination="{d}",outcome="{o}"}}', n)
        for d, lane in lanes.items()
        for o, n in sorted(lane["outcomes"].items())
    ]
    outcomes += [(f'{{destination="*",outcome="{o}"}}', n) for o, n in snapshot["records"].items()]
    metric("outcomes_total", "counter", "Records settled, by destination and outcome.", outcomes)
    for name, kind, help_text, value in PER_DESTINATION:
        samples = [(f'{{destination="{d}"}}', value(lane)) for d, lane in lanes.items()]
        metric(name, kind, help_text, samples)
    lag = [
        (f'{{destination="{d}",partition="{p}"}}', n)
        for d, lane in lanes.items()
        for p, n in sorted(lane["lag"].items())
    ]
    metric("lag", "gauge", "Records behind the end of the partition.", lag)
    registry = snapshot.get("schema_registry") or {"state": "ok"}
    metric("schema_registry_paused", "gauge", "1 while the schema registry refuses the "
           "credentials or the settings (records wait, none is dead-lettered).",
           [("", int(registry["state"] == "paused"))])  # fmt: skip
    rows = [
        (f'{{destination="{d}",figure="{k}"}}', v)
        for d, figures in snapshot["ledger"].items()
        for k, v in figures.items()
    ]
    metric("ledger_rows", "gauge", "Ledger figures by destination.", rows)
    metric("open_window", "gauge", "Claims taken over after a crash: possibly sent twice.",
           [("", snapshot["open_window"])])  # fmt: skip
    return "\n".join(lines) + "\n"


class HealthServer:
    def __init__(self, snapshot: Snapshot, *, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104
        self._snapshot = snapshot
        self._port = port
        self._host = host
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self._host, self._port)
        except OSError as exc:
            raise ConsumerError(
                f"cannot serve health and metrics on port {self._port}: {exc.strerror} "
                "(CONSUMER_HEALTH_PORT)"
            ) from None
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
            ready = bool(snapshot["ready"])
            body = json.dumps(snapshot).encode()
            return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body
        if path == "/metrics":
            return "200 OK", "text/plain; version=0.0.4", render_metrics(snapshot).encode()
        return "404 Not Found", "text/plain", b"not found"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
