"""The command line an operator uses: `status` and `rewind` (each destination's consumer group
moved back, refused while a group is live; the replay re-sends nothing)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys

import pytest
from confluent_kafka import Consumer

from consumer.ledger.sqlite import SqliteLedger
from consumer.sandbox.control import SandboxControl
from tests.integration.conftest import ROOT, Stage, wait_until
from tests.integration.expectations import expected_keys

pytestmark = pytest.mark.integration


def consumer_cli(stage: Stage, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer", *args], cwd=ROOT,
                          env=stage.process_env(**env), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


DESTINATIONS = ("nibble", "nudgify", "custobar")


def empty_ledger(stage: Stage) -> None:
    asyncio.run(SqliteLedger.open(str(stage.ledger_path)).close())


def moves(stdout: str) -> dict[str, dict[int, tuple[str, int]]]:
    """`rewind`'s report: destination → partition → (old, new)."""
    found: dict[str, dict[int, tuple[str, int]]] = {}
    current = ""
    for line in stdout.splitlines():
        if header := re.fullmatch(r"(\w+) \(group \S+\):", line):
            current = header.group(1)
            found[current] = {}
        elif move := re.fullmatch(r"  partition (\d+): (\S+) → (\d+)", line):
            found[current][int(move.group(1))] = (move.group(2), int(move.group(3)))
    return found


def test_status_reports_the_ledger_figures(stage: Stage) -> None:
    orders = stage.produce_orders(80, seed=9)
    stage.run_in_process()
    expected = expected_keys(orders)
    status = consumer_cli(stage, "status")
    assert status.returncode == 0, status.stderr
    figures = json.loads(status.stdout)
    for vendor in DESTINATIONS:
        assert figures["destinations"][vendor]["delivered"] == len(expected[vendor]), vendor
    assert figures["open_window"] == 0
    assert "secret" not in status.stdout + status.stderr


def test_rewind_moves_every_destination_group_says_what_moved_and_replays_without_sending(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(60, seed=4)
    stage.run_in_process()
    requests = {vendor: sandbox.stats()[vendor]["requests"] for vendor in DESTINATIONS}
    end = stage.end_offsets()

    rewound = consumer_cli(stage, "rewind", "earliest")
    assert rewound.returncode == 0, rewound.stderr
    assert moves(rewound.stdout) == {
        name: {p: (str(end[p]), 0) for p in range(stage.partitions)} for name in DESTINATIONS
    }
    assert '"open_window": 0' in rewound.stdout
    for name in DESTINATIONS:
        assert stage.group_committed(f"{stage.group}-{name}") == dict.fromkeys(end, 0)
    replay = stage.run_in_process()  # the replay: the ledger skips what was delivered
    assert {vendor: sandbox.stats()[vendor]["requests"] for vendor in DESTINATIONS} == requests
    assert replay["nibble"]["duplicate"] == len(expected_keys(orders)["nibble"])


def test_rewind_of_chosen_destinations_and_partitions_leaves_the_others_alone(
    stage: Stage,
) -> None:
    stage.produce_orders(30, seed=5)
    empty_ledger(stage)
    end = stage.end_offsets()
    for name in DESTINATIONS:
        stage.commit_group(f"{stage.group}-{name}", end)
    rewound = consumer_cli(stage, "rewind", "offset:2", "--destination", "nibble",
                           "--destination", "custobar", "--partition", "1")  # fmt: skip
    assert rewound.returncode == 0, rewound.stderr
    assert moves(rewound.stdout) == {"nibble": {1: (str(end[1]), 2)},
                                     "custobar": {1: (str(end[1]), 2)}}  # fmt: skip
    assert stage.group_committed(f"{stage.group}-nibble") == {**end, 1: 2}
    assert stage.group_committed(f"{stage.group}-nudgify") == end
    assert stage.group_committed(f"{stage.group}-custobar") == {**end, 1: 2}


def test_rewind_of_a_group_that_never_committed_says_none(stage: Stage) -> None:
    stage.produce_orders(10, seed=6)
    empty_ledger(stage)
    rewound = consumer_cli(stage, "rewind", "latest", "--destination", "nudgify")
    assert rewound.returncode == 0, rewound.stderr
    end = stage.end_offsets()
    assert moves(rewound.stdout) == {"nudgify": {p: ("none", end[p]) for p in end}}


@pytest.mark.parametrize(
    ("partition", "message"),
    [("7", "has 3 partition(s), 0 to 2: there is no partition 7"),
     ("-1", "partition numbers start at 0, got -1")],
)  # fmt: skip
def test_rewind_of_a_partition_the_topic_does_not_have_is_refused(
    stage: Stage, partition: str, message: str
) -> None:
    empty_ledger(stage)
    rewound = consumer_cli(stage, "rewind", "earliest", "--partition", "0",
                           "--partition", partition)  # fmt: skip
    assert rewound.returncode == 2
    assert message in rewound.stderr
    assert "Traceback" not in rewound.stderr
    for name in DESTINATIONS:
        assert set(stage.group_committed(f"{stage.group}-{name}").values()) == {-1001}


def test_rewind_while_a_group_has_live_members_says_stop_the_group_first(stage: Stage) -> None:
    stage.produce_orders(10, seed=7)
    empty_ledger(stage)
    end = stage.end_offsets()
    for name in DESTINATIONS:
        stage.commit_group(f"{stage.group}-{name}", end)
    live = Consumer({"bootstrap.servers": stage.bootstrap, "group.id": f"{stage.group}-nudgify",
                     "partition.assignment.strategy": "cooperative-sticky",
                     "enable.auto.commit": False})  # fmt: skip
    try:
        live.subscribe([stage.topic])
        assert wait_until(lambda: bool(live.poll(0.2) or live.assignment()), timeout_s=30)
        rewound = consumer_cli(stage, "rewind", "earliest")
    finally:
        live.close()
    assert rewound.returncode == 2
    assert f"{stage.group}-nudgify has 1 live member(s)" in rewound.stderr
    assert "Stop the group first" in rewound.stderr
    for name in DESTINATIONS:  # nothing was committed, not even for the stopped groups
        assert stage.group_committed(f"{stage.group}-{name}") == end


def test_bad_settings_stop_the_service_at_start_naming_every_problem(stage: Stage) -> None:
    result = consumer_cli(stage, "run", CONSUMER_NIBBLE_BASE_URL="http://api.nibble.example",
                          CONSUMER_TYPO="1")  # fmt: skip
    assert result.returncode == 2
    assert "CONSUMER_TYPO" in result.stderr
    assert "https" in result.stderr
