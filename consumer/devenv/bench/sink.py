"""The benchmark's vendor sink: the three vendor paths on 127.0.0.1 over plain HTTP/1.1, answering
200 with each vendor's success body after a configurable latency, and recording per request its
arrival time, its answer time and the order keys it carried. Nothing is validated (the vendor
sandbox does that, slowly by design): the sink must never be what limits the service.

    POST /nibble/v1/sales · /nudgify/api/purchases · /custobar/api/sales/upload/  → 200
    POST /_sink/reset {"latency_ms": 20}   forget the records, set the latency
    GET  /_sink/records                    {"nibble": [[arrived, answered, [keys]], ...], ...}

Times are wall-clock seconds (`time.time()`), comparable with Kafka record timestamps.
A small asyncio server of its own (keep-alive, Content-Length bodies), run as its own process
(`python -m consumer.devenv.bench.sink --port N`) so it has a core's share to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from consumer.devenv.bench.ceiling import SUCCESS_BODIES, body_keys

PATHS = {
    "/nibble/v1/sales": "nibble",
    "/nudgify/api/purchases": "nudgify",
    "/custobar/api/sales/upload/": "custobar",
}
BASE_PATHS = {"nibble": "/nibble", "nudgify": "/nudgify", "custobar": "/custobar"}
READY_TIMEOUT_S = 20.0

Record = tuple[float, float, list[Any]]


class Sink:
    def __init__(self) -> None:
        self.latency_s = 0.0
        self.records: dict[str, list[Record]] = {vendor: [] for vendor in PATHS.values()}
        self.refused = 0

    def reset(self, latency_ms: float) -> None:
        self.latency_s = latency_ms / 1000
        self.records = {vendor: [] for vendor in PATHS.values()}
        self.refused = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, headers = _parse_head(head)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, answer = await self.answer(method, path, body)
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s"
                    % (status, b"OK" if status == 200 else b"Error", len(answer), answer)
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        arrived = time.time()
        vendor = PATHS.get(path)
        if vendor is not None and method == "POST":
            request = orjson.loads(body)
            keys = body_keys(vendor, request)
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            success = SUCCESS_BODIES[vendor]
            if vendor == "nudgify":  # Nudgify answers the ids it saved
                success = {**success, "data": [str(key) for key in keys]}
            self.records[vendor].append((arrived, time.time(), keys))
            return 200, orjson.dumps(success)
        if path == "/_sink/reset" and method == "POST":
            self.reset(float(orjson.loads(body or b"{}").get("latency_ms", 0)))
            return 200, b"{}"
        if path == "/_sink/records":
            return 200, orjson.dumps({**self.records, "refused": self.refused})
        self.refused += 1
        return 404, b'{"message": "not a sink path"}'


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _main(port: int) -> None:
    sink = Sink()
    server = await asyncio.start_server(sink.serve, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


class SinkProcess:
    """The sink as a child process, and the harness's client of its control paths."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._client = httpx.Client(base_url=self.url, timeout=30)
        with log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "consumer.devenv.bench.sink", "--port", str(port)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C while it starts: it runs in a session of its own
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the sink exited early (code {self.process.returncode})")
            try:
                self.reset(0)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def base_url(self, vendor: str) -> str:
        return self.url + BASE_PATHS[vendor]

    def reset(self, latency_ms: float) -> None:
        self._client.post("/_sink/reset", json={"latency_ms": latency_ms}).raise_for_status()

    def records(self) -> dict[str, list[Record]]:
        answer = self._client.get("/_sink/records")
        answer.raise_for_status()
        records: dict[str, Any] = answer.json()
        records.pop("refused", None)
        return records

    def close(self) -> None:
        self._client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_sink(port: int, log_path: Path) -> Iterator[SinkProcess]:
    sink = SinkProcess(port, log_path)
    try:
        yield sink
    finally:
        sink.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The benchmark's vendor sink (loopback HTTP).")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
