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

from consumer.logs import get_logger

log = get_logger(__name__)
Snapshot = Callable[[], Awaitable[dict[str, Any]]]
PREFIX = "order_consumer_"


def render_metrics(snapshot: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, object]]) -> None:
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        lines.extend(f"{PREFIX}{name}{labels} {value}" for labels, value in samples)

    lanes: dict[str, dict[str, Any]] = snapshot["destinations"]

    def per_lane(key: Callable[[dict[str, Any]], object]) -> list[tuple[str, object]]:
        return [(f'{{destination="{d}"}}', key(lane)) for d, lane in lanes.items()]

    metric(
        "outcomes_total",
        "counter",
        "Records settled, by destination and outcome.",
        [
            (f'{{destination="{d}",outcome="{o}"}}', n)
            for d, lane in lanes.items()
            for o, n in sorted(lane["outcomes"].items())
        ]
        + [(f'{{destination="*",outcome="{o}"}}', n) for o, n in snapshot["records"].items()],
    )
    metric(
        "in_flight",
        "gauge",
        "Records fetched and not settled.",
        per_lane(lambda lane: lane["in_flight"]),
    )
    metric(
        "in_flight_bytes",
        "gauge",
        "Bytes of the records in flight.",
        per_lane(lambda lane: lane["in_flight_bytes"]),
    )
    metric(
        "lag",
        "gauge",
        "Records behind the end of the partition.",
        [
            (f'{{destination="{d}",partition="{p}"}}', n)
            for d, lane in lanes.items()
            for p, n in sorted(lane["lag"].items())
        ],
    )
    metric(
        "destination_paused",
        "gauge",
        "1 while the destination is paused (credentials, configuration or the dead-letter brake).",
        per_lane(lambda lane: int(lane["state"] == "paused")),
    )
    metric(
        "dead_letter_brake",
        "gauge",
        "1 while the dead-letter brake holds the destination.",
        per_lane(lambda lane: int(lane["brake"]["tripped"])),
    )
    metric(
        "stalled_partitions",
        "gauge",
        "Partitions whose oldest record has held the offset longer than CONSUMER_STALLED_RECORD_S.",
        per_lane(lambda lane: len(lane["stalled_partitions"])),
    )
    metric(
        "oldest_record_seconds",
        "gauge",
        "Age of the oldest unfinished record.",
        per_lane(lambda lane: lane["oldest_record_s"]),
    )
    metric(
        "internal_errors_total",
        "counter",
        "Unexpected errors while handling records.",
        per_lane(lambda lane: lane["internal_errors"]),
    )
    metric(
        "kafka_healthy",
        "gauge",
        "1 when the destination's consumer is in its group and connected.",
        per_lane(lambda lane: int(lane["kafka_healthy"])),
    )
    ledger: dict[str, dict[str, int]] = snapshot["ledger"]
    metric(
        "ledger_rows",
        "gauge",
        "Ledger figures by destination.",
        [
            (f'{{destination="{d}",figure="{k}"}}', v)
            for d, figures in ledger.items()
            for k, v in figures.items()
        ],
    )
    metric(
        "open_window",
        "gauge",
        "Claims taken over after a crash: possibly sent twice.",
        [("", snapshot["open_window"])],
    )
    return "\n".join(lines) + "\n"  # fmt: skip


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
