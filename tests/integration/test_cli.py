"""The command line an operator uses: `status` and `rewind` (replay without re-sending)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from consumer.sandbox.control import SandboxControl
from tests.integration.conftest import ROOT, Stage
from tests.integration.expectations import expected_keys

pytestmark = pytest.mark.integration


def consumer_cli(stage: Stage, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer", *args], cwd=ROOT,
                          env=stage.process_env(**env), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_status_reports_the_ledger_and_rewind_replays_without_sending_twice(
    stage: Stage, sandbox: SandboxControl
) -> None:
    orders = stage.produce_orders(80, seed=9)
    stage.run_in_process()
    expected = expected_keys(orders)
    status = consumer_cli(stage, "status")
    assert status.returncode == 0, status.stderr
    figures = json.loads(status.stdout)
    assert figures["delivered"] == sum(len(keys) for keys in expected.values())
    assert figures["open_window_taken_over"] == 0
    assert "secret" not in status.stdout + status.stderr

    requests = sandbox.stats()["nibble"]["requests"]
    rewound = consumer_cli(stage, "rewind", "earliest")
    assert rewound.returncode == 0, rewound.stderr
    assert set(json.loads(rewound.stdout)["committed"].values()) == {0}
    replay = stage.run_in_process()
    assert replay["nibble"]["duplicate"] == len(expected["nibble"])
    assert sandbox.stats()["nibble"]["requests"] == requests
    assert stage.committed() == stage.end_offsets()


def test_bad_settings_stop_the_service_at_start_naming_every_problem(stage: Stage) -> None:
    result = consumer_cli(stage, "run", CONSUMER_NIBBLE_BASE_URL="http://api.nibble.example",
                          CONSUMER_TYPO="1")  # fmt: skip
    assert result.returncode == 2
    assert "CONSUMER_TYPO" in result.stderr
    assert "https" in result.stderr
