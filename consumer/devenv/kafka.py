"""A real single-node Apache Kafka broker (KRaft, combined broker + controller) on loopback,
started from the official jars that Maven resolves from Maven Central: no Docker needed.

Used by the tests, the demo and the benchmark alike. `kafka_cluster()` yields bootstrap
servers: `KAFKA_BOOTSTRAP_SERVERS` if set (start nothing), testcontainers if asked for and a
Docker engine answers, else a `LocalKafka`.

`LocalKafka(security=BrokerSecurity(...))` adds two secured listeners next to the plaintext one
(which the broker, its controller and the test tooling keep using): SASL_SSL with SCRAM-SHA-512
and PLAIN users, and SSL that requires a client certificate (mTLS).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

if TYPE_CHECKING:  # trustme (a dev dependency) is imported only where certificates are made
    from consumer.devenv.tls import TlsFiles

KAFKA_VERSION = "4.1.1"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "local-kafka"
READY_TIMEOUT_S = 90.0


def cache_root() -> Path:
    return Path(os.environ.get("ORDER_CONSUMER_CACHE", Path.home() / ".cache" / "order-consumer"))


def ensure_kafka_jars(cache_dir: Path | None = None) -> Path:
    """Resolve the broker's jars once (Maven, from Maven Central); return the lib directory."""
    lib = (cache_dir or cache_root() / f"kafka-{KAFKA_VERSION}") / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    print(f"Resolving Apache Kafka {KAFKA_VERSION} jars into {lib} (first run only)…",
          file=sys.stderr)  # fmt: skip
    lib.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(DEPLOY / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={lib}"],
        check=True,
    )  # fmt: skip
    marker.write_text(KAFKA_VERSION)
    return lib


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """The secured listeners' material: TLS files and the users SASL accepts."""

    tls: TlsFiles
    scram_users: Mapping[str, str] = field(default_factory=dict)  # SCRAM-SHA-512
    plain_users: Mapping[str, str] = field(default_factory=dict)  # PLAIN (Confluent Cloud's)

    def properties(self) -> dict[str, str]:
        tls = self.tls
        plain_users = " ".join(f'user_{u}="{p}"' for u, p in self.plain_users.items())
        return {
            # PEM inline in the properties: no key store file, no JKS conversion, no key password.
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": tls.read("server_cert"),
            "ssl.keystore.key": tls.read("server_key"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.certificates": tls.read("ca"),
            "listener.name.ssl.ssl.client.auth": "required",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,PLAIN",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "listener.name.sasl_ssl.plain.sasl.jaas.config":
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};",
        }  # fmt: skip

    def format_args(self) -> list[str]:
        """SCRAM credentials are metadata records in KRaft: written when the storage is
        formatted, before the broker first starts (no Admin API round trip needed)."""
        return [
            arg
            for user, password in self.scram_users.items()
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]")
        ]


class LocalKafka:
    """One broker process. A persistent `data_dir` survives `restart()` and new instances."""

    def __init__(self, data_dir: Path | None = None, *, port: int | None = None,
                 heap: str = "512m", security: BrokerSecurity | None = None,
                 flush_every_message: bool = True,
                 initial_rebalance_delay_ms: int = 0) -> None:  # fmt: skip
        self._temporary = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="local-kafka-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or self._saved_port() or free_port()
        self.controller_port = free_port()
        self.security = security
        self.sasl_ssl_port = free_port() if security else None
        self.ssl_port = free_port() if security else None
        self._heap = heap
        # Tests kill the broker and need every acknowledged record on disk; production brokers
        # leave flushing to the OS and rely on replication, and so does the benchmark.
        self._flush_every_message = flush_every_message
        # Tests make a new group every few seconds and want it served at once; a production
        # broker waits 3 s for more members before a new group's first assignment, so members
        # started together are assigned together (the benchmark's two processes rely on it).
        self._initial_rebalance_delay_ms = initial_rebalance_delay_ms
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_servers(self) -> str:
        """The SASL_SSL listener (SCRAM-SHA-512 or PLAIN over TLS); needs `security`."""
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ssl_servers(self) -> str:
        """The SSL listener that requires a client certificate; needs `security`."""
        return f"127.0.0.1:{self.ssl_port}"

    def _listeners(self) -> dict[str, str]:
        listeners = {"PLAINTEXT": f"PLAINTEXT://127.0.0.1:{self.port}"}
        if self.security is not None:
            listeners["SASL_SSL"] = f"SASL_SSL://{self.sasl_ssl_servers}"
            listeners["SSL"] = f"SSL://{self.ssl_servers}"
        return listeners

    def _saved_port(self) -> int | None:
        saved = self.data_dir / "port"
        return int(saved.read_text()) if saved.exists() else None

    def _write_config(self) -> Path:
        listeners = self._listeners()
        protocols = ",".join(f"{name}:{name}" for name in listeners)
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": ",".join(listeners.values()) +
                         f",CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": ",".join(listeners.values()),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,{protocols}",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": str(self._initial_rebalance_delay_ms),
            "auto.create.topics.enable": "false",
            **({"log.flush.interval.messages": "1"} if self._flush_every_message else {}),
            **(self.security.properties() if self.security else {}),
        }  # fmt: skip
        path = self.data_dir / "server.properties"
        path.write_text("".join(_property_line(k, v) for k, v in properties.items()))
        path.chmod(0o600)  # it holds the server key
        return path

    def _java(self, main_class: str, *args: str, **popen: Any) -> subprocess.Popen[bytes]:
        lib = ensure_kafka_jars()
        command = [
            "java", f"-Xmx{self._heap}", "-Xms128m", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true", f"-Dkafka.logs.dir={self.data_dir}",
            f"-Dlog4j2.configurationFile={DEPLOY / 'log4j2.properties'}",
            "-cp", f"{lib}/*", main_class, *args,
        ]  # fmt: skip
        return subprocess.Popen(command, **popen)

    def _format(self, config: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return  # already formatted: keep the cluster id, topics and committed offsets
        with (self.data_dir / "format.log").open("wb") as out:
            formatter = self._java(
                "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}",
                "-c", str(config), "--standalone",
                *(self.security.format_args() if self.security else []), stdout=out, stderr=out,
            )  # fmt: skip
            try:
                code = formatter.wait(timeout=120)
            except BaseException:  # interrupted, or hung: the tool must not outlive us
                formatter.kill()
                formatter.wait()
                raise
            if code != 0:
                raise RuntimeError(f"kafka storage format failed:\n{self._tail('format.log')}")

    def start(self) -> LocalKafka:
        config = self._write_config()
        self._format(config)
        (self.data_dir / "port").write_text(str(self.port))
        with (self.data_dir / "stdout.log").open("ab") as out:  # the child keeps its own copy
            self._process = self._java("kafka.Kafka", str(config), stdout=out, stderr=out,
                                       start_new_session=True)  # fmt: skip
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        # librdkafka would print every refused connection while the JVM boots: stay quiet.
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"Kafka exited early:\n{self._tail('stdout.log')}\n"
                                   f"{self._tail('broker.log')}")  # fmt: skip
            try:
                metadata = admin.list_topics(timeout=2)
                if metadata.brokers:
                    return
            except KafkaException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Kafka not ready in {READY_TIMEOUT_S}s:\n{self._tail('broker.log')}")

    def _tail(self, name: str, lines: int = 30) -> str:
        path = self.data_dir / name
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def restart(self, *, hard: bool = False) -> None:
        """Same port, same data: clients reconnect to the same address."""
        self.kill() if hard else self.stop()
        self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._temporary:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalKafka:
        try:
            return self.start()
        except BaseException:  # Ctrl-C while the JVM boots: it runs in a session of its own
            self.close()
            raise

    def __exit__(self, *_: object) -> None:
        self.close()


def _property_line(key: str, value: str) -> str:
    """A properties value is one line: PEM blocks keep their line breaks as `\\n` escapes."""
    one_line = value.strip().replace("\n", "\\n")
    return f"{key}={one_line}\n"


def _docker_available() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=3).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def kafka_cluster(data_dir: Path | None = None, *, flush_every_message: bool = True,
                  initial_rebalance_delay_ms: int = 0) -> Iterator[str]:  # fmt: skip
    """Bootstrap servers of a broker to use: existing, testcontainers, or a local one (which
    flushes every message to disk and assigns a new group at once unless told otherwise: see
    `LocalKafka`)."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    if os.environ.get("ORDER_CONSUMER_USE_TESTCONTAINERS") == "1" and _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with LocalKafka(data_dir, flush_every_message=flush_every_message,
                    initial_rebalance_delay_ms=initial_rebalance_delay_ms) as broker:  # fmt: skip
        yield broker.bootstrap_servers


def create_topic(bootstrap: str, name: str, partitions: int, replication: int = 1,
                 config: dict[str, str] | None = None) -> None:  # fmt: skip
    """Create a topic and wait for it; an existing topic is fine."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    futures = admin.create_topics([NewTopic(name, partitions, replication, config=config or {})])
    try:
        futures[name].result(timeout=30)
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        topic = admin.list_topics(name, timeout=5).topics.get(name)
        if topic is not None and topic.error is None and len(topic.partitions) == partitions:
            return
        time.sleep(0.1)
    raise TimeoutError(f"topic {name} not visible after creation")


def delete_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    with contextlib.suppress(KafkaException):
        admin.delete_topics([name])[name].result(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local single-node Kafka broker.")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    broker = LocalKafka(args.data_dir, port=args.port).start()
    print(f"Kafka ready: bootstrap servers {broker.bootstrap_servers} (Ctrl-C stops it)")
    stop = signal.sigwait if hasattr(signal, "sigwait") else None
    try:
        if stop is not None:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            stop({signal.SIGINT, signal.SIGTERM})
    finally:
        broker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
