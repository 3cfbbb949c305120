"""`make demo`: the first run delivers the sample orders; the second sends nothing and says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS")),
        reason="the demo's fixed topic names on a shared cluster hold earlier runs' records",
    ),
]


def run_demo(directory: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "demo", "--orders", "60", "--dir", str(directory)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def summary_row(output: str, destination: str) -> list[int]:
    line = next(row for row in output.splitlines() if row.startswith(destination))
    return [int(figure) for figure in line.split()[1:6]]


def test_the_demo_delivers_once_and_a_second_run_sends_nothing(tmp_path: Path) -> None:
    first = run_demo(tmp_path)
    delivered, duplicate, skipped, _, _ = summary_row(first, "nibble")
    assert delivered > 0 and duplicate == 0
    assert delivered + skipped == 60
    assert "records dead-lettered before any destination (undecodable/invalid): 3\n" in first
    accepted = (tmp_path / "sandbox" / "nibble.jsonl").read_text().splitlines()
    assert len(accepted) == delivered

    second = run_demo(tmp_path)
    for destination in ("nibble", "nudgify", "custobar"):
        assert summary_row(second, destination)[0] == 0, destination
    assert summary_row(second, "nibble")[1] == delivered
    assert "Nothing new was delivered" in second
    assert "(and 3 dead-lettered by an earlier run)" in second
    assert len((tmp_path / "sandbox" / "nibble.jsonl").read_text().splitlines()) == delivered
