"""The bench's paced run reports latency at steady load: its warm-up is counted apart."""

from __future__ import annotations

import pytest

from consumer.devenv.bench.paced import latencies


def test_paced_latency_counts_orders_after_the_warm_up_and_reports_the_warm_up_apart():
    keys = [f"K{i}" for i in range(400)]
    produced = {i: 1000.0 + i * 0.01 for i in range(400)}  # 100/s for 4 s
    # The first second of orders waited 500 ms for their answer, the rest 50 ms.
    answered = {i: produced[i] + (0.5 if i < 100 else 0.05) for i in range(400)}
    records = {"nibble": [(None, answered[i], [keys[i]]) for i in range(400)]}

    result = latencies({"nibble": keys}, records, produced, warm_up_s=1.0)

    assert result["samples"] == 300
    assert result["p99"] == pytest.approx(50, abs=1)
    assert result["warm_up_p99"] == pytest.approx(500, abs=1)
    counted_all = latencies({"nibble": keys}, records, produced, warm_up_s=0.0)
    assert counted_all["p99"] == pytest.approx(500, abs=1)
    assert counted_all["warm_up_p99"] is None
