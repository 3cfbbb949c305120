"""Shutdown is bounded: a hung broker call cannot keep the process alive past its allowance."""

from __future__ import annotations

import subprocess
import sys
import time

from consumer.__main__ import EXIT_SHUTDOWN_TIMEOUT


def test_a_shutdown_that_hangs_past_its_allowance_exits_anyway() -> None:
    hung = "from consumer.__main__ import _arm_shutdown_watchdog as arm; arm(0.3); " \
           "import time; time.sleep(30)"  # fmt: skip
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", hung], capture_output=True, text=True,
                            timeout=20, check=False)  # fmt: skip
    assert result.returncode == EXIT_SHUTDOWN_TIMEOUT
    assert time.monotonic() - started < 10
    assert "consumer.shutdown_timeout" in result.stdout + result.stderr
