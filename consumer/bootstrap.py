"""The composition root: settings → ledger, decoder, vendor clients, and one lane per destination
(its consumer group, worker and in-flight window), sharing the dead-letter office.

The only place that knows every concrete class; everything else receives what it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import httpx
from confluent_kafka import KafkaException, Producer

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
from consumer.errors import ConsumerError, LedgerError
from consumer.health import HealthServer
from consumer.ledger import Ledger, LedgerStats, open_ledger
from consumer.logs import get_logger
from consumer.pipeline import Lane, LaneLimits
from consumer.records import RECORD, DeadLetterOffice
from consumer.registry import build_registry
from consumer.runner import KafkaSource, seed_destination_groups

log = get_logger(__name__)
SEED_RETRY_S = 5.0
LEDGER_STATS_TIMEOUT_S = 1.0


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
    lanes: list[Lane]
    office: DeadLetterOffice
    dead_letters: KafkaDeadLetters
    clients: list[httpx.AsyncClient]
    decoder: Decoder
    health: HealthServer | None = None
    _stats: LedgerStats = dataclasses.field(default_factory=lambda: LedgerStats({}))

    def summary(self) -> dict[str, dict[str, int]]:
        """Outcomes per destination; `*`: records that never became an order."""
        table = {lane.name: dict(sorted(lane.outcomes.items())) for lane in self.lanes}
        records = {o: n for (d, o), n in self.office.outcomes.items() if d == RECORD}
        if records:
            table[RECORD] = records
        return table

    async def _ledger_stats(self) -> LedgerStats:
        """The ledger's figures, or the last ones read while it does not answer within a
        second: /metrics and /health stay served through a ledger outage."""
        try:
            self._stats = await asyncio.wait_for(self.ledger.stats(), LEDGER_STATS_TIMEOUT_S)
        except (TimeoutError, LedgerError) as exc:
            log.warning("ledger.stats_unavailable", error=str(exc) or "timeout")
        return self._stats

    @property
    def in_flight(self) -> int:
        return sum(lane.in_flight for lane in self.lanes)

    async def snapshot(self) -> dict[str, Any]:
        stats = await self._ledger_stats()
        lanes = {lane.name: lane.snapshot() for lane in self.lanes}
        return {
            "ready": all(lane["kafka_healthy"] for lane in lanes.values()),
            "destinations": lanes,
            "records": {o: n for (d, o), n in self.office.outcomes.items() if d == RECORD},
            "schema_registry": (
                {"state": registry.health.state, "reason": registry.health.reason}
                if (registry := self.decoder.registry) is not None
                else None
            ),
            "ledger": {
                name: dataclasses.asdict(figures) for name, figures in stats.destinations.items()
            },
            "open_window": stats.open_window,
        }

    async def run(self, stop: asyncio.Event, *, idle_exit_s: float | None = None) -> bool:
        """Run every lane until `stop` (or until all are idle that long); True when every
        record fetched got its outcome."""
        if self.health is not None:
            await self.health.start()
        if not await self._seed_groups(stop):
            await self.close()
            return True
        for lane in self.lanes:
            lane.worker.start()
        helpers = [asyncio.create_task(self._serve_dead_letters())]
        if idle_exit_s is not None:
            helpers.append(asyncio.create_task(self._stop_when_idle(stop, idle_exit_s)))
        try:
            results = await asyncio.gather(
                *(lane.run(stop) for lane in self.lanes), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return self.in_flight == 0
        finally:
            stop.set()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            await self.close()

    async def _seed_groups(self, stop: asyncio.Event) -> bool:
        """Start each destination's group where an earlier version's shared group stopped;
        until Kafka answers, wait (not ready) and say why. False: stopped meanwhile."""
        names = [lane.name for lane in self.lanes]
        while not stop.is_set():
            try:
                seeded = await asyncio.to_thread(seed_destination_groups, self.settings, names)
            except (ConsumerError, KafkaException) as exc:
                log.error("kafka.unreachable", error=str(exc), retry_in_s=SEED_RETRY_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SEED_RETRY_S)
                continue
            log.info("consumer.groups", groups=seeded)
            return True
        return False

    async def _serve_dead_letters(self) -> None:
        """The producer's delivery callbacks run inside poll(), on this thread."""
        while True:
            self.dead_letters.poll()
            await asyncio.sleep(0.005)

    async def _stop_when_idle(self, stop: asyncio.Event, idle_s: float) -> None:
        while not stop.is_set():
            await asyncio.sleep(0.1)
            if all(lane.idle_for(idle_s) for lane in self.lanes):
                log.info("consumer.idle", idle_s=idle_s)
                stop.set()

    async def close(self) -> None:
        remaining = self.dead_letters.flush(5.0)
        if remaining:
            log.warning("dead_letter.unflushed", messages=remaining)
        for lane in self.lanes:
            await lane.worker.aclose()
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
    dead_letters = KafkaDeadLetters(Producer(producer_config(settings)), settings.dead_letter_topic)
    office = DeadLetterOffice(dead_letters, ledger, owner=settings.instance_id, backoff=backoff,
                              lease_s=d.lease_s)  # fmt: skip
    bounds = settings.limits
    limits = LaneLimits(
        max_in_flight=settings.max_in_flight,
        max_in_flight_bytes=bounds.max_in_flight_bytes,
        shutdown_grace_s=settings.shutdown_grace_s,
        internal_error_retries=bounds.internal_error_retries,
        stalled_record_s=bounds.stalled_record_s,
        brake_ratio=bounds.dlq_brake_ratio,
        brake_window=bounds.dlq_brake_window,
        brake_min=bounds.dlq_brake_min,
        probe_every_s=d.credentials_retry_s,
    )
    lanes = []
    for destination in build_destinations(settings):
        worker = DestinationWorker(
            destination,
            ledger,
            owner=settings.instance_id,
            secret=settings.idempotency_secret.reveal().encode(),
            linger_s=d.linger_ms / 1000,
            concurrency=d.concurrent_requests,
            backoff=backoff,
            credentials_retry_s=d.credentials_retry_s,
            lease_s=d.lease_s,
            internal_error_retries=bounds.internal_error_retries,
            force=settings.resend,
        )
        source = KafkaSource(settings, settings.destination_group(destination.name))
        lanes.append(Lane(source=source, decoder=decoder, transform=destination.transform,
                          worker=worker, office=office, limits=limits))  # fmt: skip
    service = Service(settings, ledger, lanes, office, dead_letters, clients, decoder)
    if settings.health_port:
        service.health = HealthServer(service.snapshot, port=settings.health_port)
    return service
