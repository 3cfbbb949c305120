"""`consumer sandbox`: the vendor sandbox as a standalone server for local development."""

from __future__ import annotations

import argparse
from pathlib import Path

from consumer.sandbox.control import bind, server_for
from consumer.sandbox.settings import SandboxSettings


def main(argv: list[str] | None = None) -> int:
    defaults = SandboxSettings()
    parser = argparse.ArgumentParser(
        prog="consumer sandbox",
        description="Nibble, Nudgify and Custobar stand-ins and a schema registry on one port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument(
        "--record-dir", type=Path, help="append accepted payloads as <vendor>.jsonl"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault dice")
    args = parser.parse_args(argv)
    settings = SandboxSettings(record_dir=args.record_dir, seed=args.seed)
    sock = bind(args.host, args.port)
    url = f"http://{args.host}:{sock.getsockname()[1]}"
    print(
        f"vendor sandbox on {url}\n"
        f"  Nibble    {url}/nibble    X-Api-Key: {defaults.nibble_api_key}"
        f"  X-Nibble-Api-Secret: {defaults.nibble_api_secret}\n"
        f"  Nudgify   {url}/nudgify   Authorization: Bearer {defaults.nudgify_api_key}"
        f"  site_key: {defaults.nudgify_site_key}\n"
        f"  Custobar  {url}/custobar  Authorization: Token {defaults.custobar_token}\n"
        f"  Registry  {url}/registry\n"
        f"  Control   {url}/_sandbox/stats, /_sandbox/records/<vendor>, /_sandbox/faults/<vendor>",
        flush=True,
    )
    server_for(settings).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
