"""Run the sandbox (in a thread, or as its own process) and drive its `/_sandbox` control API."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp

from consumer.sandbox.app import build_app
from consumer.sandbox.settings import SandboxSettings


class SandboxControl:
    """A small synchronous client of the control API."""

    def __init__(self, base_url: str, *, timeout_s: float = 30) -> None:
        self._client = httpx.Client(base_url=f"{base_url.rstrip('/')}/_sandbox", timeout=timeout_s)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        try:
            return bool(self._json("GET", "/health")["status"] == "ok")
        except httpx.HTTPError:
            return False

    def reset(self) -> None:
        self._json("POST", "/reset")

    def stats(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = self._json("GET", "/stats")
        return result

    def records(self, vendor: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", f"/records/{vendor}")
        return result

    def state(self, vendor: str) -> dict[str, Any]:
        """What the vendor holds per order: Custobar's merged sales, Nibble's and Nudgify's
        accepted payloads per key (see `holdings`)."""
        result: dict[str, Any] = self._json("GET", f"/state/{vendor}")
        return result

    def request_sizes(self, vendor: str) -> list[int]:
        result: list[int] = self._json("GET", f"/request-sizes/{vendor}")
        return result

    def set_faults(self, vendor: str, **faults: Any) -> None:
        """Replace the vendor's faults (see `state.Faults` for the names)."""
        self._json("PUT", f"/faults/{vendor}", json=faults)

    def clear_faults(self) -> None:
        self._json("DELETE", "/faults")

    def finish_session(self, nibble_id: str, **outcome: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", f"/nibble/sessions/{nibble_id}/finish", json=outcome
        )
        return result

    def close(self) -> None:
        self._client.close()


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@dataclass(frozen=True, slots=True)
class ServerTls:
    """Serve HTTPS with this certificate; with `client_ca`, require a client certificate."""

    cert: Path
    key: Path
    client_ca: Path | None = None


def server_for(settings: SandboxSettings) -> uvicorn.Server:
    return server_for_app(build_app(settings))


def server_for_app(app: ASGIApp, tls: ServerTls | None = None) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        backlog=1024,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
    )
    return uvicorn.Server(config)


@contextmanager
def run_sandbox_in_thread(settings: SandboxSettings, port: int = 0) -> Iterator[str]:
    """The sandbox on a loopback port in a daemon thread; yields its base URL."""
    with run_app_in_thread(build_app(settings), port=port) as url:
        yield url


@contextmanager
def run_app_in_thread(
    app: ASGIApp, *, tls: ServerTls | None = None, port: int = 0
) -> Iterator[str]:
    """An ASGI app on a loopback port in a daemon thread; yields its base URL (https://localhost
    with `tls`, so the certificate's host name matches)."""
    sock = bind(port=port)
    server = server_for_app(app, tls)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the sandbox server did not start")
        time.sleep(0.02)
    host, bound_port = sock.getsockname()
    try:
        yield f"https://localhost:{bound_port}" if tls else f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def spawn_sandbox(
    settings_args: list[str] | None = None, *, log: Path | None = None
) -> Iterator[str]:
    """The sandbox as its own OS process (so it competes for CPU like a real vendor would)."""
    sock = bind()
    port = sock.getsockname()[1]
    sock.close()
    command = [
        sys.executable,
        "-m",
        "consumer",
        "sandbox",
        "--port",
        str(port),
        *(settings_args or []),
    ]
    with log.open("ab") if log else open(os.devnull, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    control = SandboxControl(url, timeout_s=2)
    try:
        deadline = time.monotonic() + 30
        while not control.health():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the vendor sandbox process did not start (exit {process.poll()})"
                )
            time.sleep(0.1)
        yield url
    finally:
        control.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
