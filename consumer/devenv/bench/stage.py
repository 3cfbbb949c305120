"""Everything a benchmark run stands on: the broker, the sink, PostgreSQL, the preloaded topic,
the code trees measured (this one and an optional baseline commit in a temporary git worktree),
the CONSUMER_* environment of the service's runs, and every child process, so that all of it
is stopped and removed on the way out, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from consumer.devenv.bench.ceiling import write_values
from consumer.devenv.kafka import create_topic
from consumer.devenv.samples import encode_schemaless, load_schema, sample_orders

PREFIX = "BN"  # order numbers BN-100000, BN-100001, …
ROOT = Path(__file__).resolve().parents[3]
DESTINATIONS = ("nibble", "nudgify", "custobar")
IDEMPOTENCY_SECRET = "bench-idempotency-secret-0123456789"  # noqa: S105 (a bench value)
CREDENTIALS = {
    "NIBBLE_API_KEY": "bench-nibble-key",
    "NIBBLE_API_SECRET": "bench-nibble-secret",
    "NUDGIFY_API_KEY": "bench-nudgify-key",
    "NUDGIFY_SITE_KEY": "510eeb08-814e-456a-b5c1-8c7c70cc4c00",
    "CUSTOBAR_TOKEN": "bench-custobar-token",
}
COMMIT_INTERVAL_MS = 200
"""The one setting the bench changes from the service's defaults (1000 ms): the end of a run is
seen when the last offsets are committed, so a shorter interval measures the work, not the
timer. Every other setting is the service's default unless a run says otherwise."""


class Children:
    """Every process the bench starts; `stop_all` ends them (TERM, then KILL) by their ids."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], *, log_path: Path, **popen: Any) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, **popen)  # fmt: skip
        self._processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        with contextlib.suppress(ValueError):
            self._processes.remove(process)
        return process.returncode

    def stop_all(self) -> None:
        for process in list(self._processes):
            self.stop(process, timeout_s=5.0)


@dataclass
class CodeTree:
    """A checkout whose `consumer` package is measured: this repository or a baseline commit."""

    label: str  # "new" or the baseline ref
    path: Path
    commit: str

    def python_env(self) -> dict[str, str]:
        """The environment for a process that must import this tree's `consumer`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMER_")}
        env["PYTHONPATH"] = str(self.path)
        return env


def current_tree() -> CodeTree:
    return CodeTree("new", ROOT, _git("rev-parse", "--short", "HEAD").strip())


@contextlib.contextmanager
def baseline_tree(ref: str, parent: Path) -> Iterator[CodeTree]:
    """`ref` checked out into a temporary git worktree outside the repository; removed after."""
    commit = _git("rev-parse", "--short", f"{ref}^{{commit}}").strip()
    path = parent / f"baseline-{commit}"
    _git("worktree", "add", "--detach", "--force", str(path), commit)
    try:
        yield CodeTree(ref, path, commit)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _git("worktree", "remove", "--force", str(path))
        _git("worktree", "prune")


BASELINE_NEEDS = ("consumer/bootstrap.py", "consumer/config.py", "consumer/decode.py",
                  "consumer/deliver/destination.py", "consumer/deliver/worker.py")  # fmt: skip
"""What the CPU-ceiling harness imports from a baseline: an older commit lacks some, and its
B would import them from this checkout instead (the editable install finds them)."""


def baseline_problem(ref: str) -> str | None:
    """None when `ref` names a commit the bench can measure, else why not (one line)."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [""])[-1]
        return reason or "not a commit of this repository (git rev-parse found none)"
    commit = done.stdout.strip()
    missing = [path for path in BASELINE_NEEDS
               if subprocess.run(["git", "cat-file", "-e", f"{commit}:{path}"], cwd=ROOT,
                                 capture_output=True).returncode != 0]  # fmt: skip
    if missing:
        return f"too old for this bench: it has no {', '.join(missing)} (4f9b267 and later work)"
    return None


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


@dataclass
class Topic:
    """The preloaded topic: its record values in order of production, and where it ends."""

    name: str
    partitions: int
    values: list[bytes]
    end_offsets: dict[int, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(self.end_offsets.values())


def preload(bootstrap: str, name: str, *, orders: int, partitions: int, values_path: Path) -> Topic:
    """Create the topic and its dead-letter topic, produce the sample orders once (keyed by
    order number), and keep the values for the in-process runs."""
    schema = load_schema()
    values = [encode_schemaless(r, schema) for r in sample_orders(orders, seed=2026, prefix=PREFIX)]
    keys = [order_key(i).encode() for i in range(orders)]
    create_topic(bootstrap, name, partitions=partitions)
    create_topic(bootstrap, f"{name}.dlq", partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                         "enable.idempotence": True})  # fmt: skip
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        producer.produce(name, key=key, value=value)
        if i % 5000 == 4999:
            producer.flush()
    if producer.flush(60) != 0:
        raise RuntimeError("the broker did not acknowledge every preloaded order")
    write_values(values_path, values)
    topic = Topic(name, partitions, values)
    topic.end_offsets = end_offsets(bootstrap, name, partitions)
    if topic.records != orders:
        raise RuntimeError(f"topic {name} holds {topic.records} records, expected {orders}")
    return topic


def order_key(index: int) -> str:
    """The Kafka key (the order number) of sample order `index`."""
    return f"{PREFIX}-{100000 + index}"


def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-probe"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)}  # fmt: skip
    finally:
        consumer.close()


def service_env(
    *, bootstrap: str, sink_url: str, topic: str, group: str, ledger_url: str,
    overrides: dict[str, str] | None = None,
) -> dict[str, str]:  # fmt: skip
    """The CONSUMER_* settings of one run (only names every measured version knows)."""
    env = {
        "BOOTSTRAP_SERVERS": bootstrap,
        "TOPIC": topic,
        "DEAD_LETTER_TOPIC": f"{topic}.dlq",
        "GROUP_ID": group,
        "LEDGER_URL": ledger_url,
        "IDEMPOTENCY_SECRET": IDEMPOTENCY_SECRET,
        "NIBBLE_BASE_URL": f"{sink_url}/nibble",
        "NUDGIFY_BASE_URL": f"{sink_url}/nudgify",
        "CUSTOBAR_BASE_URL": f"{sink_url}/custobar",
        "COMMIT_INTERVAL_MS": str(COMMIT_INTERVAL_MS),
        "LOG_FORMAT": "json",
        **CREDENTIALS,
        **(overrides or {}),
    }
    return {f"CONSUMER_{k}": v for k, v in env.items()}


class StageError(RuntimeError):
    """The bench cannot set its stage up (the message says why, in one line)."""


def reachable(bootstrap: str, timeout_s: float = 10.0) -> None:
    """Raise StageError unless a broker answers at `bootstrap` within `timeout_s`."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise StageError(f"no Kafka broker answers at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS):"
                         f" {exc.args[0].str() if exc.args else exc}") from None  # fmt: skip


GROUPS_USED: set[str] = set()  # every group a bench run named, for the clean-up


def new_group() -> str:
    group = f"bench-{uuid.uuid4().hex[:10]}"
    GROUPS_USED.add(group)
    return group


def remove_leftovers(bootstrap: str, topic: str) -> None:
    """On a cluster that outlives the bench (`KAFKA_BOOTSTRAP_SERVERS`): delete the topics it
    created (`topic`, and `topic` followed by `.` or `-`: its dead letters, the sweep's and the
    paced runs' topics) and the consumer groups it used; best effort."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        topics = [t for t in admin.list_topics(timeout=10).topics
                  if t == topic or t.startswith((f"{topic}.", f"{topic}-"))]  # fmt: skip
        groups = [f"{base}{suffix}" for base in sorted(GROUPS_USED)
                  for suffix in ("", *(f"-{d}" for d in DESTINATIONS))]  # fmt: skip
        futures = [*(admin.delete_topics(topics).values() if topics else ()),
                   *(admin.delete_consumer_groups(groups).values() if groups else ())]  # fmt: skip
    except KafkaException as exc:
        progress(f"could not remove the bench's topics and groups: {exc}")
        return
    for future in futures:
        # A group never created has nothing to delete; a slow cluster must not cost the results.
        with contextlib.suppress(KafkaException, TimeoutError):
            future.result(timeout=30)
    GROUPS_USED.clear()


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="order-consumer-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def progress(message: str) -> None:
    """A line on stderr; never raises: after Ctrl-C a `| tee` may be gone, and the clean-up
    that prints must still run."""
    with contextlib.suppress(OSError):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
