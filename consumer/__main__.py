"""Command line: `consumer run` (the service), `sandbox`, `demo`, `status`, `rewind`.

`python -m consumer run` is the production entry point; it is configured by CONSUMER_*
environment variables (see README: Configuration) and stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from typing import Any

from consumer import config, logs
from consumer.errors import ConfigError, ConsumerError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "sandbox":
        from consumer.sandbox.__main__ import main as sandbox_main

        return sandbox_main(args[1:])
    if args and args[0] == "demo":
        from consumer.demo import main as demo_main

        return demo_main(args[1:])
    parser = argparse.ArgumentParser(prog="consumer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume the topic and deliver to the vendors")
    run.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                     help="exit once caught up and idle this long (batch jobs, demo)")  # fmt: skip
    sub.add_parser("status", help="ledger figures, incl. the open window")
    rewind = sub.add_parser("rewind", help="move the (stopped) group's offsets to replay")
    rewind.add_argument("target", help="earliest | latest | offset:N | time:<ISO 8601 with zone>")
    rewind.add_argument("--partition", type=int, action="append", dest="partitions",
                        help="only this partition (repeatable); default: all")  # fmt: skip
    sub.add_parser("sandbox", help="run the vendor sandbox (see `consumer sandbox --help`)")
    sub.add_parser("demo", help="broker + sandbox + sample orders + consumer, then a summary")
    parsed = parser.parse_args(args)
    try:
        settings = config.load()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(level=settings.log_level, fmt=settings.log_format, secrets=settings.secrets())
    try:
        if parsed.command == "status":
            return asyncio.run(_status(settings))
        if parsed.command == "rewind":
            from consumer.rewind import rewind as rewind_group

            try:
                moved = rewind_group(settings, parsed.target, parsed.partitions)
            except ValueError as exc:
                print(f"rewind: {exc}", file=sys.stderr)
                return 2
            stats = asyncio.run(_ledger_stats(settings))
            print(json.dumps({"topic": settings.topic, "group": settings.group_id,
                              "committed": moved, "ledger": stats}))  # fmt: skip
            return 0
        return asyncio.run(_run(settings, idle_exit_s=parsed.idle_exit))
    except ConsumerError as exc:
        logs.get_logger("consumer").error("consumer.failed", error=str(exc))
        return 1


async def _run(settings: config.Settings, *, idle_exit_s: float | None) -> int:
    from consumer.bootstrap import build_service

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
            _arm_shutdown_watchdog(settings.shutdown_grace_s + SHUTDOWN_CLOSE_ALLOWANCE_S)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    service = await build_service(settings)
    finished = await service.run(stop, idle_exit_s=idle_exit_s)
    log = logs.get_logger("consumer")
    log.info("consumer.summary", outcomes=service.summary())
    if not finished and idle_exit_s is not None:  # a batch job stopped before it was done
        log.error("consumer.unfinished", in_flight=service.in_flight)
        return EXIT_UNFINISHED
    return 0


SHUTDOWN_CLOSE_ALLOWANCE_S = 15.0
EXIT_SHUTDOWN_TIMEOUT = 3
EXIT_UNFINISHED = 4  # stopped with records that had no outcome yet (they are re-read next time)


def _arm_shutdown_watchdog(seconds: float) -> None:
    """The shutdown is bounded even if a broker call hangs (a close during a stuck rebalance):
    past the grace period plus an allowance for the final commit and close, exit anyway.
    Nothing is lost: uncommitted records are re-read and the ledger skips what was sent."""

    def expire() -> None:
        logs.get_logger("consumer").error("consumer.shutdown_timeout", after_s=seconds)
        os._exit(EXIT_SHUTDOWN_TIMEOUT)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


async def _ledger_stats(settings: config.Settings) -> dict[str, Any]:
    """The ledger's figures per destination; the open window is what a replay cannot vouch for."""
    from consumer.ledger import open_ledger

    ledger = await open_ledger(settings.ledger_url, create=False)
    try:
        stats = await ledger.stats()
    finally:
        await ledger.close()
    return {
        "destinations": {
            name: {"delivered": f.delivered, "dead_lettered": f.dead_lettered,
                   "claimed_not_completed": f.claimed, "open_window_taken_over": f.taken_over}
            for name, f in stats.destinations.items()
        },
        "open_window": stats.open_window,
    }  # fmt: skip


async def _status(settings: config.Settings) -> int:
    stats = await _ledger_stats(settings)
    location = settings.ledger_url.split("@")[-1]  # never the credentials part of a URL
    print(json.dumps({"ledger": location, **stats}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
