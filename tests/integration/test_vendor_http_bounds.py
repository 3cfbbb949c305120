"""A vendor can neither hold a request forever nor flood us: against a real loopback server that
drips its answer one byte at a time, or answers 100 MB, a client gives up within its timeout and
reads at most the response cap."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

import pytest

from consumer.deliver.destination import Outbound
from consumer.deliver.http import MESSAGE_CHARS, RESPONSE_CAP_BYTES, build_client
from consumer.deliver.nibble import NibbleDestination
from consumer.errors import DeliveryError, RejectedError, TransientError
from consumer.model import Payload

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5
DRIP_EVERY_S = 0.05  # far below the per-read timeout: httpx's own timeouts never fire
HUNDRED_MB = 100 * 1024 * 1024
Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw HTTP/1.1 server on loopback: reads one request, then runs `answer`."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self.bytes_written = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            await self._answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up: that is the point
        finally:
            writer.close()

    async def send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.bytes_written += len(data)

    async def deliver(self) -> tuple[DeliveryError | None, float]:
        """One Nibble send against this server: the error (or None) and how long it took."""
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = build_client(f"http://127.0.0.1:{port}", timeout_s=TIMEOUT_S, concurrency=1)
        nibble = NibbleDestination(client, api_key="k", api_secret="s", report_all_sales=True)
        batch = [Outbound.of("SO-1", Payload(({"order_number": "SO-1"},)))]
        started = time.monotonic()
        try:
            await nibble.send(batch, idempotency_key="key")
            error = None
        except DeliveryError as exc:
            error = exc
        elapsed = time.monotonic() - started
        await nibble.aclose()
        server.close()
        await server.wait_closed()
        return error, elapsed


def run(answer: Callable[[Server, asyncio.StreamWriter], Awaitable[None]]) -> tuple:
    async def main() -> tuple:
        server = Server(lambda writer: answer(server, writer))
        error, elapsed = await server.deliver()
        return server, error, elapsed

    return asyncio.run(main())


async def drip(server: Server, writer: asyncio.StreamWriter, data: bytes) -> None:
    for byte in data:
        await server.send(writer, bytes([byte]))
        await asyncio.sleep(DRIP_EVERY_S)


def head(status: str, length: int) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\n\r\n".encode()


async def flood(server: Server, writer: asyncio.StreamWriter, status: str) -> None:
    await server.send(writer, head(status, HUNDRED_MB))
    chunk = b"x" * (1024 * 1024)
    for _ in range(100):
        await server.send(writer, chunk)


# --- a vendor that drips ---------------------------------------------------------------------


def test_a_vendor_dripping_its_status_line_is_given_up_on_within_the_timeout():
    _, error, elapsed = run(lambda s, w: drip(s, w, head("200 OK", 2) + b"{}"))
    assert isinstance(error, TransientError)
    assert f"within {TIMEOUT_S:g} s" in error.message
    assert TIMEOUT_S - 0.1 < elapsed < TIMEOUT_S + 1.0


def test_a_vendor_dripping_an_error_body_is_given_up_on_within_the_timeout():
    body = b'{"errorMessage": "' + b"slow " * 200 + b'"}'

    async def answer(server: Server, writer: asyncio.StreamWriter) -> None:
        await server.send(writer, head("400 Bad Request", len(body)))
        await drip(server, writer, body)

    server, error, elapsed = run(answer)
    assert isinstance(error, TransientError)
    assert f"within {TIMEOUT_S:g} s" in error.message
    assert TIMEOUT_S - 0.1 < elapsed < TIMEOUT_S + 1.0
    assert server.bytes_written < len(body)  # it had not finished: we did not wait for it


def test_a_success_whose_body_drips_counts_as_delivered_at_the_deadline():
    # The status line is the verdict; resending an accepted sale would only duplicate it.
    async def answer(server: Server, writer: asyncio.StreamWriter) -> None:
        body = b'{"ok": "' + b"." * 500 + b'"}'
        await server.send(writer, head("200 OK", len(body)))
        await drip(server, writer, body)

    _, error, elapsed = run(answer)
    assert error is None
    assert TIMEOUT_S - 0.1 < elapsed < TIMEOUT_S + 1.0


# --- a vendor that floods --------------------------------------------------------------------


def test_a_100_mb_error_body_is_read_only_up_to_the_cap_and_still_classified_by_status():
    server, error, elapsed = run(lambda s, w: flood(s, w, "400 Bad Request"))
    assert isinstance(error, RejectedError)
    assert error.message == "x" * MESSAGE_CHARS  # the truncated text, cut to a message
    assert server.bytes_written < HUNDRED_MB // 4  # we hung up long before the end
    assert elapsed < 3


def test_a_100_mb_server_error_is_transient_without_reading_it_all():
    server, error, _ = run(lambda s, w: flood(s, w, "503 Service Unavailable"))
    assert isinstance(error, TransientError)
    assert error.status == 503
    assert server.bytes_written < HUNDRED_MB // 4


def test_a_100_mb_success_body_is_delivered_without_reading_it_all():
    server, error, _ = run(lambda s, w: flood(s, w, "200 OK"))
    assert error is None
    assert server.bytes_written < HUNDRED_MB // 4
    assert RESPONSE_CAP_BYTES < HUNDRED_MB
