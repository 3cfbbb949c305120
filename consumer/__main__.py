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

from consumer import config, logs
from consumer.errors import ConfigError, ConsumerError, LedgerError


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
    rewind = sub.add_parser("rewind", help="move the (stopped) groups' offsets to replay")
    rewind.add_argument("target", help="earliest | latest | offset:N | time:<ISO 8601 with zone>")
    rewind.add_argument(
        "--partition",
        type=int,
        action="append",
        dest="partitions",
        help="only this partition (repeatable); default: all",
    )
    rewind.add_argument(
        "--destination",
        action="append",
        dest="destinations",
        choices=("nibble", "nudgify", "custobar"),
        help="only this destination's group (repeatable); default: every enabled destination",
    )
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
            return _status(settings)
        if parsed.command == "rewind":
            return _rewind(settings, parsed.target, parsed.destinations, parsed.partitions)
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
    log.info(
        "consumer.summary", outcomes=service.summary(), records_decoded=service.decoder.decoded
    )
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


def _status(settings: config.Settings) -> int:
    from consumer.ledger_view import ledger_figures

    try:
        figures = asyncio.run(ledger_figures(settings.ledger_url))
    except LedgerError as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 1
    location = settings.ledger_url.split("@")[-1]  # never the credentials part of a URL
    print(json.dumps({"ledger": location, **figures}, indent=2))
    return 0


def _rewind(
    settings: config.Settings,
    target: str,
    destinations: list[str] | None,
    partitions: list[int] | None,
) -> int:
    """Rewind each chosen destination's group and print what moved. The ledger must exist: it
    is what makes the replay skip what was delivered, so without it nothing is rewound."""
    from consumer.ledger_view import ledger_figures
    from consumer.rewind import enabled_destinations, rewind

    chosen = destinations or enabled_destinations(settings)
    try:
        figures = asyncio.run(ledger_figures(settings.ledger_url))
    except LedgerError as exc:
        print(f"rewind: {exc}; nothing was rewound", file=sys.stderr)
        return 1
    try:
        moved = rewind(settings, target, destinations=chosen, partitions=partitions)
    except ValueError as exc:
        print(f"rewind: {exc}", file=sys.stderr)
        return 2
    print(f"rewound topic {settings.topic} to {target}")
    for name, moves in moved.items():
        print(f"{name} (group {settings.destination_group(name)}):")
        for move in moves:
            old = "none" if move.old is None else move.old
            print(f"  partition {move.partition}: {old} → {move.new}")
    print("ledger: " + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
