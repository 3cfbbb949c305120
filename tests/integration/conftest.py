"""Integration fixtures: one real Kafka broker per session, the vendor sandbox per module, and
helpers to produce orders and run the consumer in-process or as a real OS process."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from consumer import config
from consumer.devenv.kafka import BrokerSecurity, LocalKafka, create_topic, kafka_cluster
from consumer.devenv.samples import (
    encode_schemaless,
    load_schema,
    produce,
    produce_messages,
    sample_orders,
)
from consumer.devenv.tls import TlsFiles, make_tls_files
from consumer.sandbox.control import SandboxControl, run_sandbox_in_thread
from consumer.sandbox.settings import SandboxSettings
from tests.model import Record

pytestmark = pytest.mark.integration
DESTINATIONS = ("nibble", "nudgify", "custobar")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    with kafka_cluster() as servers:
        yield servers


@pytest.fixture(scope="module")
def sandbox_settings() -> SandboxSettings:
    return SandboxSettings()


@pytest.fixture(scope="module")
def sandbox_url(sandbox_settings: SandboxSettings) -> Iterator[str]:
    with run_sandbox_in_thread(sandbox_settings) as url:
        yield url


@pytest.fixture
def sandbox(sandbox_url: str) -> Iterator[SandboxControl]:
    control = SandboxControl(sandbox_url)
    control.reset()
    yield control
    control.reset()
    control.close()


@dataclass
class Stage:
    """A fresh topic pair, group and ledger for one test, with the env the consumer needs."""

    bootstrap: str
    sandbox_url: str
    creds: SandboxSettings
    tmp: Path
    partitions: int = 3
    name: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    def __post_init__(self) -> None:
        self.topic = f"orders-{self.name}"
        self.dlq = f"orders-{self.name}.dlq"
        self.group = f"group-{self.name}"
        self.ledger_path = self.tmp / f"ledger-{self.name}.sqlite3"
        create_topic(self.bootstrap, self.topic, partitions=self.partitions)
        create_topic(self.bootstrap, self.dlq, partitions=1)
        self.schema = load_schema()

    def env(self, **overrides: str) -> dict[str, str]:
        c = self.creds
        env = {
            "CONSUMER_BOOTSTRAP_SERVERS": self.bootstrap,
            "CONSUMER_TOPIC": self.topic,
            "CONSUMER_DEAD_LETTER_TOPIC": self.dlq,
            "CONSUMER_GROUP_ID": self.group,
            "CONSUMER_LEDGER_URL": f"sqlite:///{self.ledger_path}",
            "CONSUMER_IDEMPOTENCY_SECRET": "integration-test-secret-0123456789",
            "CONSUMER_NIBBLE_BASE_URL": f"{self.sandbox_url}/nibble",
            "CONSUMER_NIBBLE_API_KEY": c.nibble_api_key,
            "CONSUMER_NIBBLE_API_SECRET": c.nibble_api_secret,
            "CONSUMER_NUDGIFY_BASE_URL": f"{self.sandbox_url}/nudgify",
            "CONSUMER_NUDGIFY_API_KEY": c.nudgify_api_key,
            "CONSUMER_NUDGIFY_SITE_KEY": c.nudgify_site_key,
            "CONSUMER_CUSTOBAR_BASE_URL": f"{self.sandbox_url}/custobar",
            "CONSUMER_CUSTOBAR_TOKEN": c.custobar_token,
            "CONSUMER_BATCH_LINGER_MS": "20",
            "CONSUMER_RETRY_INITIAL_S": "0.05",
            "CONSUMER_RETRY_MAX_S": "0.5",
            "CONSUMER_CREDENTIALS_RETRY_S": "0.3",
            "CONSUMER_COMMIT_INTERVAL_MS": "200",
            "CONSUMER_HTTP_TIMEOUT_S": "5",
            "CONSUMER_LOG_FORMAT": "json",
            # A killed member leaves the group after this, not librdkafka's 45 s default, so
            # a restarted consumer gets its partitions back quickly.
            "CONSUMER_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "CONSUMER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        }
        env.update(overrides)
        return env

    def process_env(self, **overrides: str) -> dict[str, str]:
        """The environment of a consumer OS process: ours without CONSUMER_ leftovers."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMER_")}
        env.update(self.env(**overrides))
        return env

    def settings(self, **overrides: str) -> config.Settings:
        return config.load(self.env(**overrides))

    def produce_orders(
        self,
        count: int,
        *,
        seed: int = 1,
        prefix: str | None = None,
        extra: list[tuple[bytes | None, bytes]] | None = None,
    ) -> list[dict[str, Any]]:
        orders = sample_orders(count, seed=seed, prefix=prefix or f"T{self.name[:4]}")
        produce(self.bootstrap, self.topic, orders,
                encode=lambda r: encode_schemaless(r, self.schema), extra=extra or [])  # fmt: skip
        return orders

    def produce_records(self, records: Sequence[Record]) -> None:
        """Model records in order: orders as schemaless Avro, poison as given, each on its own
        partition with its own key."""

        def value(record: Record) -> bytes:
            if record.order is None:
                return record.poison or b""
            return encode_schemaless(record.order, self.schema)

        produce_messages(
            self.bootstrap, self.topic, [(r.partition, r.key, value(r)) for r in records]
        )

    def rewind(self, target: str, **overrides: str) -> str:
        """`consumer rewind <target>` for the (stopped) consumer, every destination's group: every
        replay of a test goes through here, so a change in how the service is rewound is made in
        one place. Returns what the command printed (per destination, what moved)."""
        result = subprocess.run([sys.executable, "-m", "consumer", "rewind", target], cwd=ROOT,
                                env=self.process_env(**overrides), capture_output=True,
                                text=True, timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    def dead_letter_keys(self, at_least: int, timeout_s: float = 20) -> list[tuple[str, str]]:
        """What the dead-letter topic holds, as (destination, order number), or for a record
        no destination could read ("*", "partition@offset")."""
        keys = []
        for letter in self.dead_letters(at_least, timeout_s=timeout_s):
            headers = {k: v.decode() for k, v in letter.headers() or ()}
            if headers["dlq.destination"] == "*":
                where = f"{headers['dlq.original.partition']}@{headers['dlq.original.offset']}"
                keys.append(("*", where))
            else:
                keys.append((headers["dlq.destination"], headers["dlq.order_number"]))
        return keys

    def kill_mid_run(
        self, started: Callable[[], bool], *, after_s: float = 0, timeout_s: float = 30,
        **overrides: str,
    ) -> None:  # fmt: skip
        """Start a consumer process, wait until `started()` (say, a vendor accepted something)
        or `timeout_s`, then `after_s` more, and SIGKILL it."""
        process = self.spawn(**overrides)
        try:
            wait_until(lambda: started() or process.poll() is not None, timeout_s=timeout_s)
            time.sleep(after_s)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)

    def run_members(self, count: int, *, idle_exit_s: float = 2, timeout_s: float = 120,
                    **overrides: str) -> list[int]:  # fmt: skip
        """`count` consumer processes in the group until each is idle; their exit codes."""
        members = [self.spawn(idle_exit_s=idle_exit_s, **overrides) for _ in range(count)]
        try:
            return [member.wait(timeout=timeout_s) for member in members]
        finally:
            for member in members:
                if member.poll() is None:
                    member.kill()
                    member.wait(timeout=30)

    def committed(self, destination: str | None = None) -> dict[int, int]:
        """One destination's committed offsets, or (None) what every destination committed:
        the lowest per partition. -1001: nothing committed."""
        if destination is not None:
            return self.group_committed(f"{self.group}-{destination}")
        per_destination = [self.committed(d) for d in DESTINATIONS]
        return {p: min(c[p] for c in per_destination) for p in range(self.partitions)}

    def group_committed(self, group: str) -> dict[int, int]:
        """A consumer group's committed offset per partition (-1001: none)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            parts = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        finally:
            consumer.close()

    def commit_group(self, group: str, offsets: dict[int, int]) -> None:
        """Commit for a group as one of its (stopped) consumers would have."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                asynchronous=False,
            )
        finally:
            consumer.close()

    def end_offsets(self) -> dict[int, int]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "probe"})
        try:
            return {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                    for p in range(self.partitions)}  # fmt: skip
        finally:
            consumer.close()

    def dead_letters(self, expected: int, timeout_s: float = 20) -> list[Any]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"dlq-{uuid.uuid4()}",
                             "auto.offset.reset": "earliest"})  # fmt: skip
        consumer.subscribe([self.dlq])
        found: list[Any] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(found) < expected and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    found.append(message)
            end = time.monotonic() + 1.0  # and nothing more than expected
            while time.monotonic() < end:
                message = consumer.poll(0.2)
                if message is not None and message.error() is None:
                    found.append(message)
        finally:
            consumer.close()
        return found

    def run_in_process(self, *, idle_exit_s: float = 2.0, timeout_s: float = 120,
                       **overrides: str) -> dict[str, dict[str, int]]:  # fmt: skip
        """Run the service on this thread until caught up and idle; returns its outcomes."""
        from consumer.bootstrap import build_service

        async def main() -> dict[str, dict[str, int]]:
            service = await build_service(self.settings(**overrides))
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(timeout_s, stop.set)
            await service.run(stop, idle_exit_s=idle_exit_s)
            return service.summary()

        return asyncio.run(main())

    def spawn(self, *, log_path: Path | None = None, idle_exit_s: float | None = None,
              **overrides: str) -> subprocess.Popen[bytes]:  # fmt: skip
        """A real consumer OS process (for SIGKILL/SIGTERM/SIGSTOP scenarios)."""
        env = self.process_env(**overrides)
        args = [sys.executable, "-m", "consumer", "run"]
        if idle_exit_s is not None:
            args += ["--idle-exit", str(idle_exit_s)]
        with (log_path or self.tmp / f"consumer-{uuid.uuid4().hex[:6]}.log").open("ab") as out:
            return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.fixture
def stage(
    bootstrap: str,
    sandbox_url: str,
    sandbox_settings: SandboxSettings,
    sandbox: SandboxControl,
    tmp_path: Path,
) -> Stage:
    return Stage(bootstrap, sandbox_url, sandbox_settings, tmp_path)


def readiness(port: int) -> tuple[int, dict[str, Any]] | None:
    """A consumer's `/health/ready`: (status, body), or None while nothing answers."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=3)
    except httpx.HTTPError:
        return None
    return response.status_code, response.json()


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


@dataclass(frozen=True)
class SecuredKafka:
    """A broker with SASL_SSL (SCRAM-SHA-512 and PLAIN users) and mTLS listeners, and the
    per-run TLS files and passwords; its plaintext listener serves the test tooling only."""

    broker: LocalKafka
    tls: TlsFiles
    scram_user: str
    scram_password: str
    api_key: str  # PLAIN, as Confluent Cloud names its Kafka credentials
    api_secret: str


@pytest.fixture(scope="session")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """Started only by the tests that ask for it (tests/integration/test_secured.py)."""
    tls = make_tls_files(tmp_path_factory.mktemp("tls"))
    scram_password, api_secret = secrets.token_urlsafe(18), secrets.token_urlsafe(24)
    security = BrokerSecurity(tls, scram_users={"order-consumer": scram_password},
                              plain_users={"CLOUDAPIKEY1": api_secret})  # fmt: skip
    with LocalKafka(security=security) as broker:
        yield SecuredKafka(broker, tls, "order-consumer", scram_password, "CLOUDAPIKEY1",
                           api_secret)  # fmt: skip
