"""`consumer demo`: the whole flow on one machine, end to end, in about a minute.

Starts a single-node Kafka broker (or uses KAFKA_BOOTSTRAP_SERVERS), the vendor sandbox, a
Schema Registry stand-in, produces sample orders (plus two poison records) in the Confluent
wire format, runs the consumer until it is caught up, and prints what each destination got.
The ledger lives in the demo directory, so a second run delivers nothing new and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from consumer import config, logs
from consumer.devenv.kafka import create_topic, kafka_cluster
from consumer.devenv.samples import (
    encode_confluent,
    load_schema,
    produce,
    register_schema,
    sample_orders,
)
from consumer.sandbox.control import SandboxControl, run_sandbox_in_thread
from consumer.sandbox.settings import SandboxSettings

TOPIC, DLQ = "order-completed", "order-completed.dlq"


def demo_environment(
    sandbox_url: str, bootstrap: str, ledger: Path, creds: SandboxSettings
) -> dict[str, str]:
    return {
        "CONSUMER_BOOTSTRAP_SERVERS": bootstrap,
        "CONSUMER_TOPIC": TOPIC,
        "CONSUMER_DEAD_LETTER_TOPIC": DLQ,
        "CONSUMER_GROUP_ID": "order-consumer-demo",
        "CONSUMER_SCHEMA_REGISTRY_URL": f"{sandbox_url}/registry",
        "CONSUMER_LEDGER_URL": f"sqlite:///{ledger}",
        "CONSUMER_IDEMPOTENCY_SECRET": "demo-idempotency-secret-0123456789",
        "CONSUMER_NIBBLE_BASE_URL": f"{sandbox_url}/nibble",
        "CONSUMER_NIBBLE_API_KEY": creds.nibble_api_key,
        "CONSUMER_NIBBLE_API_SECRET": creds.nibble_api_secret,
        "CONSUMER_NUDGIFY_BASE_URL": f"{sandbox_url}/nudgify",
        "CONSUMER_NUDGIFY_API_KEY": creds.nudgify_api_key,
        "CONSUMER_NUDGIFY_SITE_KEY": creds.nudgify_site_key,
        "CONSUMER_CUSTOBAR_BASE_URL": f"{sandbox_url}/custobar",
        "CONSUMER_CUSTOBAR_TOKEN": creds.custobar_token,
        "CONSUMER_CUSTOBAR_COMPANY": "SHOP",
        "CONSUMER_LOG_LEVEL": "warning",
        "CONSUMER_LOG_FORMAT": "json",
        "CONSUMER_BATCH_LINGER_MS": "20",
    }


def poison_records(schema: Any, schema_id: int) -> list[tuple[bytes | None, bytes]]:
    """Records a real topic eventually carries: garbage bytes, an unknown schema id, and an
    order whose money does not add up. Each must be dead-lettered, none may stop the demo."""
    broken = sample_orders(1, seed=99, prefix="BROKEN")[0]
    broken["total"] = broken["total"] + 100
    return [
        (b"garbage", b"\x00\x00\x00"),
        (b"unknown-schema", struct.pack(">bI", 0, 999_999) + b"\x02"),
        (b"BROKEN-100000", encode_confluent(broken, schema, schema_id)),
    ]


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    # The summary tells the story; per-record warnings (the poison records) would drown it.
    logs.configure(level="error", fmt="json")
    yield


async def _consume(env: dict[str, str], total: int) -> dict[str, dict[str, int]]:
    from consumer.bootstrap import build_service

    settings = config.load(env)
    service = await build_service(settings)
    stop = asyncio.Event()

    async def progress() -> None:
        while True:
            await asyncio.sleep(2)
            done = {lane.name: sum(lane.outcomes.values()) for lane in service.lanes}
            figures = ", ".join(f"{name} {n}/{total}" for name, n in done.items())
            print(f"  … records done: {figures}; {service.in_flight} in flight", file=sys.stderr)

    reporter = asyncio.create_task(progress())
    try:
        await service.run(stop, idle_exit_s=3.0)
    finally:
        reporter.cancel()
    return service.summary()


def print_summary(summary: dict[str, dict[str, int]], stats: dict[str, Any], root: Path) -> None:
    columns = ("delivered", "duplicate", "skipped", "dead_lettered", "already_dead_lettered")
    print()
    print(f"{'destination':<12}" + "".join(f"{c:>22}" for c in columns))
    for destination in ("nibble", "nudgify", "custobar"):
        row = summary.get(destination, {})
        print(f"{destination:<12}" + "".join(f"{row.get(c, 0):>22}" for c in columns))
    undecodable = summary.get("*", {}).get("dead_lettered", 0)
    earlier = summary.get("*", {}).get("already_dead_lettered", 0)
    print(f"\nrecords dead-lettered before any destination (undecodable/invalid): {undecodable}"
          + (f" (and {earlier} dead-lettered by an earlier run)" if earlier else ""))  # fmt: skip
    delivered = sum(
        summary.get(d, {}).get("delivered", 0) for d in ("nibble", "nudgify", "custobar")
    )
    if delivered == 0:
        print(
            "Nothing new was delivered: every order was already in the ledger "
            f"({root / 'ledger.sqlite3'}). That is the idempotency guarantee at work."
        )
    print("\nvendor sandbox (this run): requests, orders accepted, repeats")
    for vendor, figures in stats.items():
        print(f"  {vendor:<9} {figures['requests']:>5} requests  {figures['distinct']:>5} orders"
              f"  {figures['duplicates']:>3} duplicates")  # fmt: skip
    print(f"\nPayloads the sandbox accepted: {root / 'sandbox'}/<vendor>.jsonl")
    print(f"Dead letters: topic {DLQ} (headers dlq.destination, dlq.error.*, dlq.original.*)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="consumer demo", description=__doc__)
    parser.add_argument("--orders", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=Path(".demo"))
    args = parser.parse_args(argv)
    root: Path = args.dir.resolve()
    (root / "sandbox").mkdir(parents=True, exist_ok=True)
    creds = SandboxSettings(record_dir=root / "sandbox")
    schema = load_schema()
    with _quiet_logs(), kafka_cluster() as bootstrap, run_sandbox_in_thread(creds) as sandbox_url:
        print(f"Kafka at {bootstrap}; vendor sandbox at {sandbox_url}", file=sys.stderr)
        create_topic(bootstrap, TOPIC, partitions=6)
        create_topic(bootstrap, DLQ, partitions=1)
        schema_id = register_schema(f"{sandbox_url}/registry", f"{TOPIC}-value")
        orders = sample_orders(args.orders)
        produced = produce(bootstrap, TOPIC, orders,
                           encode=lambda r: encode_confluent(r, schema, schema_id),
                           extra=poison_records(schema, schema_id))  # fmt: skip
        print(f"Produced {produced} records ({args.orders} orders + 3 poison) to {TOPIC}; "
              "consuming…", file=sys.stderr)  # fmt: skip
        env = demo_environment(sandbox_url, bootstrap, root / "ledger.sqlite3", creds)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CONSUMER_")}, **env}
        summary = asyncio.run(_consume(env, produced))
        stats = SandboxControl(sandbox_url).stats()
    print_summary(summary, stats, root)
    return 0
