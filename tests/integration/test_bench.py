"""The benchmark harness works at a tiny size: the sink answers and records, and a 200-order
`make bench` of A, B and D0 completes and writes the JSON the team reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from consumer.devenv.bench import sink as sink_module
from consumer.devenv.bench.sink import SinkProcess, running_sink
from consumer.devenv.kafka import LocalKafka, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_the_sink_answers_each_vendor_after_its_latency_and_records_the_order_keys(
    tmp_path: Path,
) -> None:
    with running_sink(free_port(), tmp_path / "sink.log") as sink:
        sink.reset(30)
        with httpx.Client(base_url=sink.url, timeout=5) as client:
            started = time.time()
            nibble = client.post(
                "/nibble/v1/sales",
                json={"sales": [{"order_number": "A-1"}, {"order_number": "A-2"}]},
            )
            nudgify = client.post(
                "/nudgify/api/purchases", json={"site_key": "k", "orders": [{"order_id": 7}]}
            )
            custobar = client.post(
                "/custobar/api/sales/upload/",
                json={"sales": [{"sale_external_id": "A-1"}, {"sale_external_id": "A-1"}]},
            )
            unknown = client.post("/nibble/v2/else", json={})  # fmt: skip
        assert (nibble.status_code, nibble.json()) == (200, {"success": True})
        assert nudgify.json() == {"message": "Request successfully saved.", "data": ["7"]}
        assert custobar.json() == {"response": "ok"}
        assert unknown.status_code == 404
        records = sink.records()
    assert [keys for _, _, keys in records["nibble"]] == [["A-1", "A-2"]]
    assert [keys for _, _, keys in records["nudgify"]] == [[7]]
    assert [keys for _, _, keys in records["custobar"]] == [["A-1"]]  # a sale's rows: one order
    arrived, answered, _ = records["nibble"][0]
    assert started <= arrived and answered - arrived >= 0.03


def test_a_200_order_bench_of_a_b_and_d0_writes_the_results_json(
    bootstrap: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMER_")}
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap  # the session's broker: start no other
    done = subprocess.run(
        [sys.executable, "-m", "consumer.devenv.bench", "--orders", "200", "--rounds", "1",
         "--runs", "A,B,D0", "--sink-seconds", "0.5", "--out-dir", str(tmp_path)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    (path,) = tmp_path.glob("*.json")
    results = json.loads(path.read_text())
    assert results["failures"] == []
    assert {"rounds", "summary", "ratios", "sink", "settings", "trees", "machine"} <= set(results)
    (rnd,) = results["rounds"]
    assert rnd["A"]["records"] == 200
    assert rnd["B"]["orders"] == 200 and rnd["B"]["cpu_us_per_order"] > 0
    d0 = rnd["D"]["D0 sqlite x1"]
    assert d0["orders"] == 200 and d0["layout"] == "per-destination groups"
    assert not any(d0["missing"].values()) and not any(d0["duplicates"].values())
    # The service's summary says how often it decoded: its three lanes shared each record.
    assert d0["decodes_per_order"] == 1.0
    assert {"A raw drain records/s", "B CPU ceiling orders/s", "D0 sqlite x1 orders/s"} <= set(
        results["summary"]
    )
    assert results["ratios"]["D0 / B"]["median"] > 0
    assert results["sink"]["headroom_ok"]
    assert "D0 / B" in done.stdout
    # A cluster the bench did not start is left as it was found: no bench topic, no group.
    assert results["broker"] == "KAFKA_BOOTSTRAP_SERVERS"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = results["topic"]
    assert topic.startswith("bench-")
    leftovers = [t for t in admin.list_topics(timeout=10).topics if t.startswith(topic)]
    assert leftovers == []
    groups = admin.list_consumer_groups().result(timeout=10).valid
    assert [g.group_id for g in groups if g.group_id.startswith("bench-")] == []


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C, arriving while a child process of the bench is still starting."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\tZ" not in status.read_text().split("State:")[1][:4]


def test_ctrl_c_while_the_broker_starts_stops_it_and_removes_its_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted(self: LocalKafka) -> None:
        raise _Interrupted

    monkeypatch.setattr(LocalKafka, "_wait_ready", interrupted)
    broker = LocalKafka()
    with pytest.raises(_Interrupted), broker:
        pass
    assert broker._process is not None  # the JVM was started (in a session of its own)
    assert not _alive(broker._process.pid)
    assert not broker.data_dir.exists()


def test_ctrl_c_while_the_sink_starts_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[SinkProcess] = []

    def interrupted(self: SinkProcess) -> None:
        started.append(self)
        raise _Interrupted

    monkeypatch.setattr(sink_module.SinkProcess, "_wait_ready", interrupted)
    with pytest.raises(_Interrupted), running_sink(free_port(), tmp_path / "sink.log"):
        pass
    (sink,) = started
    assert not _alive(sink.pid)
