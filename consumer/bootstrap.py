"""The composition root: settings → ledger, decoder, vendor clients, workers, pipeline, runner.

The only place that knows every concrete class; everything else receives what it needs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import httpx
from confluent_kafka import Producer

from consumer.config import Settings
from consumer.dead_letter import KafkaDeadLetters, producer_config
from consumer.decode import Decoder, load_schema
from consumer.deliver.custobar import CustobarDestination, auth_header
from consumer.deliver.destination import Destination
from consumer.deliver.http import build_client
from consumer.deliver.nibble import NibbleDestination
from consumer.deliver.nudgify import NudgifyDestination
from consumer.deliver.retry import Backoff
from consumer.deliver.worker import DestinationWorker
from consumer.health import HealthServer
from consumer.ledger import Ledger, open_ledger
from consumer.logs import get_logger
from consumer.pipeline import Pipeline
from consumer.registry import build_registry
from consumer.runner import Runner

log = get_logger(__name__)


def build_destinations(settings: Settings) -> list[Destination]:
    d = settings.delivery
    destinations: list[Destination] = []

    def client(base_url: str, auth: httpx.Auth | None = None) -> httpx.AsyncClient:
        return build_client(base_url, timeout_s=d.http_timeout_s,
                            concurrency=d.concurrent_requests, auth=auth)  # fmt: skip

    if settings.nibble.enabled:
        n = settings.nibble
        assert n.api_key is not None and n.api_secret is not None  # checked by config.load
        destinations.append(
            NibbleDestination(client(n.base_url), api_key=n.api_key.reveal(),
                              api_secret=n.api_secret.reveal(),
                              report_all_sales=n.report_all_sales, batch_size=n.batch_size)
        )  # fmt: skip
    if settings.nudgify.enabled:
        g = settings.nudgify
        assert g.api_key is not None and g.site_key is not None
        destinations.append(
            NudgifyDestination(client(g.base_url), api_key=g.api_key.reveal(),
                               site_key=g.site_key, batch_size=g.batch_size)
        )  # fmt: skip
    if settings.custobar.enabled:
        c = settings.custobar
        assert c.base_url is not None
        basic = None
        if c.auth == "basic":
            assert c.username is not None and c.password is not None
            basic = httpx.BasicAuth(c.username, c.password.reveal())
        token = c.token.reveal() if c.token is not None else None
        destinations.append(
            CustobarDestination(client(c.base_url, basic), headers=auth_header(c.auth, token=token),
                                default_currency=c.default_currency, company=c.company,
                                batch_size=c.batch_size)
        )  # fmt: skip
    return destinations


@dataclasses.dataclass
class Service:
    settings: Settings
    ledger: Ledger
    pipeline: Pipeline
    runner: Runner
    dead_letters: KafkaDeadLetters
    clients: list[httpx.AsyncClient]
    health: HealthServer | None

    async def snapshot(self) -> dict[str, Any]:
        stats = await self.ledger.stats()
        return {
            "assigned": bool(self.runner.assignment),
            "partitions": sorted(p for _, p in self.runner.assignment),
            "in_flight": self.runner.in_flight,
            "outcomes": self.pipeline.metrics.summary(),
            "destinations": {
                w.name: {"state": w.health.state, "reason": w.health.reason}
                for w in self.pipeline.workers
            },
            "ledger": {**dataclasses.asdict(stats), "open_window": stats.open_window},
        }

    async def run(self, stop: asyncio.Event, *, idle_exit_s: float | None = None) -> None:
        if self.health is not None:
            await self.health.start()
        for worker in self.pipeline.workers:
            worker.start()
        try:
            await self.runner.run(stop, idle_exit_s=idle_exit_s)
        finally:
            await self.close()

    async def close(self) -> None:
        remaining = self.dead_letters.flush(5.0)
        if remaining:
            log.warning("dead_letter.unflushed", messages=remaining)
        for worker in self.pipeline.workers:
            await worker.aclose()
        for client in self.clients:
            await client.aclose()
        if self.health is not None:
            await self.health.stop()
        await self.ledger.close()


async def build_service(settings: Settings) -> Service:
    d = settings.delivery
    backoff = Backoff(initial_s=d.retry_initial_s, maximum_s=d.retry_max_s)
    ledger = await open_ledger(settings.ledger_url)
    clients: list[httpx.AsyncClient] = []
    if (registry := build_registry(settings)) is not None:  # registry.health: for readiness
        clients.append(registry.client)
        decoder = Decoder(reader_schema=load_schema(settings.reader_schema), registry=registry)
    else:
        decoder = Decoder(
            reader_schema=load_schema(settings.reader_schema),
            writer_schema=load_schema(settings.writer_schema),
        )
    workers = [
        DestinationWorker(
            destination,
            ledger,
            owner=settings.instance_id,
            secret=settings.idempotency_secret.reveal().encode(),
            linger_s=d.linger_ms / 1000,
            concurrency=d.concurrent_requests,
            backoff=backoff,
            credentials_retry_s=d.credentials_retry_s,
            lease_s=d.lease_s,
            force=settings.resend,
        )
        for destination in build_destinations(settings)
    ]
    dead_letters = KafkaDeadLetters(Producer(producer_config(settings)), settings.dead_letter_topic)
    pipeline = Pipeline(decoder=decoder, workers=workers, ledger=ledger,
                        dead_letters=dead_letters, owner=settings.instance_id,
                        backoff=backoff)  # fmt: skip
    runner = Runner(settings, pipeline, on_tick=dead_letters.poll)
    service = Service(settings, ledger, pipeline, runner, dead_letters, clients, None)
    if settings.health_port:
        service.health = HealthServer(service.snapshot, port=settings.health_port)
    return service
