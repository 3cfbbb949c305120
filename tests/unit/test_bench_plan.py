"""What a user of `make bench` sees before and around the measurements: bad input refused at
once in one line, progress that counts to its end, failed runs kept out of the figures, and a
paced run that says when the preloaded orders are too few for it."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from consumer.devenv.bench import __main__ as bench_main
from consumer.devenv.bench import paced, rounds, stage
from consumer.devenv.bench.drain import DrainResult
from consumer.devenv.bench.naive import NaiveResult
from consumer.devenv.bench.probes import Series
from consumer.devenv.bench.rounds import Bench, Options, Stage
from consumer.devenv.bench.service import Context, RunFailed, ServiceResult, ServiceRun, ServiceSpec
from consumer.devenv.bench.stage import CodeTree, Topic


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--orders", "0"], "argument --orders: 0 must be at least 1"),
        (["--orders", "-5"], "argument --orders: -5 must be at least 1"),
        (["--partitions", "0"], "argument --partitions: 0 must be at least 1"),
        (["--rounds", "0"], "argument --rounds: 0 must be at least 1"),
        (["--latency-ms", "0"], "argument --latency-ms: 0 must be above 0"),
        (["--latency-ms", "-1"], "argument --latency-ms: -1 must be above 0"),
        (["--in-flight", "abc"], "argument --in-flight: 'abc' is not a number"),
        (["--in-flight", ","], "argument --in-flight: give at least one value"),
        (["--latencies", "0,-5"], "argument --latencies: -5 must be at least 0"),
        (["--runs", ""], "--runs names no run"),
        (["--runs", "X"], "unknown runs ['X']"),
        (["--runs", "B,paced"], "the paced run paces at half of DL's rate: add DL"),
        (["--baseline", "no-such-ref-anywhere"], "--baseline no-such-ref-anywhere: not a commit"),
        (["--out-dir", "/proc/no-such-dir"], "--out-dir /proc/no-such-dir: "),
        (["--plot", "/tmp"], "--plot /tmp: give the PNG file to write"),
        (["--latency-ms", "10000"], "argument --latency-ms: 10000 must be below 10000"),
        (["--latencies", "0,20000"], "argument --latencies: 20000 must be below 10000"),
    ],
)
def test_bad_bench_arguments_are_refused_in_one_line_before_anything_starts(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_main.parse(argv)
    assert exit_.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error
    assert "Traceback" not in error


def test_the_run_names_are_explained_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench_main.parse(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for name in rounds.RUNS:
        assert f"{name}: " in help_text
    assert "paced: latency at 50% of DL's rate (needs DL)" in help_text


def _result(label: str, *, missing: int = 0, latency: dict[str, Any] | None = None,
            rate: float = 1000.0) -> ServiceResult:  # fmt: skip
    vendors = ("nibble", "nudgify", "custobar")
    return ServiceResult(
        label=label, orders=100, orders_per_s=rate, window_s=0.1, startup_s=0.5,
        first_request_s=0.6, cpu_us_per_order=200.0, peak_rss_mb=80.0,
        requests=dict.fromkeys(vendors, 2), missing={"nibble": missing, "nudgify": 0,
        "custobar": 0}, duplicates=dict.fromkeys(vendors, 0), layout="per-destination groups",
        sink_cpu_share=0.01, service_cores=0.9, machine_busy_cores=1.0,
        peak_requests_per_s=10.0, exit_codes=[0], latency_ms=latency or {},
    )  # fmt: skip


class _Script:
    """Stands in for every measured run (they need a broker); records what the bench told."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, missing_in: str = "") -> None:
        self.progress: list[str] = []
        monkeypatch.setattr(rounds, "progress", self.progress.append)
        monkeypatch.setattr(rounds, "drain", lambda *_: DrainResult(100, 1e5, 0.001, 0.1))
        monkeypatch.setattr(rounds, "naive", lambda *_, **__: NaiveResult(3, 15.0, 0.2, 9))

        def ceiling(stage: Stage, tree: CodeTree) -> dict[str, Any]:
            stage.keys[tree.label] = {"nibble": [], "nudgify": [], "custobar": []}
            return {"orders": 100, "orders_per_s": 9000.0, "cpu_us_per_order": 110.0}

        def service(_ctx: Context, spec: ServiceSpec, **_: Any) -> ServiceResult:
            latency = {"p50": 40.0, "p95": 60.0, "p99": 90.0} if spec.paced_rate else None
            return _result(spec.label, missing=int(spec.label == missing_in), latency=latency)

        monkeypatch.setattr(rounds, "ceiling", ceiling)
        monkeypatch.setattr(rounds, "run_service", service)

    @property
    def steps(self) -> list[tuple[int, int]]:
        found = (re.search(r"\((\d+)/(\d+)\)$", line) for line in self.progress)
        return [(int(m[1]), int(m[2])) for m in found if m]


def _stage(tmp_path: Path, *, baseline: bool) -> Stage:
    topic = Topic("bench-t", 6, [b""] * 100, {p: 0 for p in range(6)})
    trees = [CodeTree("new", tmp_path, "aaaaaaa")]
    if baseline:
        trees.append(CodeTree("old", tmp_path, "bbbbbbb"))
    return Stage("127.0.0.1:9", None, topic, topic, trees, None, tmp_path, None,  # type: ignore[arg-type]
                 tmp_path / "values.bin", external=False)  # fmt: skip


@pytest.mark.parametrize(
    ("runs", "baseline"),
    [
        (("A", "D0"), True),  # B not asked for: it still runs once, for the D runs' checks
        (("A",), False),  # no D run: no B at all
        (("B", "D0", "DL", "pg", "2p", "paced", "sweep"), True),
        (("C", "DL", "paced"), False),
    ],
)
def test_the_progress_counter_ends_exactly_at_its_total(
    runs: tuple[str, ...], baseline: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _Script(monkeypatch)
    options = Options(orders=100, rounds=2, runs=runs, baseline="HEAD" if baseline else None,
                      in_flight=(100, 500), latencies=(0, 20))  # fmt: skip
    bench = Bench(options, _stage(tmp_path, baseline=baseline))

    bench.run()

    steps = script.steps
    assert [n for n, _ in steps] == list(range(1, len(steps) + 1))
    assert {total for _, total in steps} == {len(steps)}
    assert bench.failures == []


def test_a_run_that_lost_orders_is_reported_and_left_out_of_the_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = _Script(monkeypatch, missing_in="D0 sqlite x1")
    bench = Bench(Options(orders=100, rounds=1, runs=("B", "D0", "DL")),
                  _stage(tmp_path, baseline=False))  # fmt: skip

    bench.run()

    (rnd,) = bench.rounds
    assert rnd["D"]["D0 sqlite x1"] is None
    assert rnd["D"]["D20 sqlite x1"]["orders_per_s"] == 1000.0
    (failure,) = bench.failures
    assert "D0 sqlite x1: orders missing at the sink" in failure
    assert "left out of the medians and ratios" in failure
    assert any(line.startswith("FAILED") and "D0 sqlite x1" in line for line in script.progress)


def _paced_run(tmp_path: Path, orders: int, told: list[str]) -> ServiceRun:
    topic = Topic("bench-t", 6, [b""] * orders, {p: 0 for p in range(6)})
    ctx = Context("127.0.0.1:9", None, topic, CodeTree("new", tmp_path, "aaaaaaa"), None,  # type: ignore[arg-type]
                  tmp_path, {})  # fmt: skip
    spec = ServiceSpec(20, paced_rate=1000.0, paced_seconds=10.0)
    return ServiceRun(ctx, spec, "1-1", told.append)


def test_a_paced_run_with_too_few_orders_for_its_warm_up_fails_saying_how_many_it_needs(
    tmp_path: Path,
) -> None:
    told: list[str] = []
    run = _paced_run(tmp_path, 5_000, told)

    with pytest.raises(RunFailed, match=r"too few orders to pace at 1,000/s: .* need 15,000, "
                       r"--orders is 5,000"):  # fmt: skip
        run._paced_count(1000.0, 10.0)


def test_a_paced_run_shortened_by_the_preloaded_orders_says_how_long_it_measured(
    tmp_path: Path,
) -> None:
    told: list[str] = []
    run = _paced_run(tmp_path, 9_000, told)

    assert run._paced_count(1000.0, 10.0) == 9_000
    (warning,) = told
    assert "9,000 orders last 4.0 s after the warm-up at 1,000/s, not 10 s" in warning
    enough = _paced_run(tmp_path, 20_000, told)
    assert enough._paced_count(1000.0, 10.0) == 15_000
    assert len(told) == 1  # nothing said when the orders suffice


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_latency_or_time_box_that_is_not_a_finite_number_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for flag in ("--latency-ms", "--naive-seconds", "--paced-seconds"):
        with pytest.raises(SystemExit):
            bench_main.parse([f"{flag}={value}"])
        assert f"argument {flag}: {value} must be above 0" in capsys.readouterr().err


def test_a_second_interrupt_while_cleaning_up_only_says_to_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class GoneStderr:
        def write(self, _text: str) -> int:
            raise BrokenPipeError  # `make bench | tee`: the first Ctrl-C took tee with it

        def flush(self) -> None:
            raise BrokenPipeError

    interrupt = bench_main._Interrupt()
    with pytest.raises(KeyboardInterrupt):
        interrupt(2, None)
    monkeypatch.setattr("sys.stderr", GoneStderr())
    interrupt(2, None)  # returns: the clean-up it lands in goes on
    interrupt(15, None)


class _Sink:
    """The sink's records as `SinkProcess.records()` returns them: (arrived, answered, keys)."""

    pid = 0

    def __init__(self, records: dict[str, list[Any]]) -> None:
        self._records = records

    def records(self) -> dict[str, list[Any]]:
        return self._records


def _measured(tmp_path: Path, *, assigned: float, answers: list[tuple[float, int, str]],
              finished: float, pacer_start: float | None = None) -> ServiceResult:  # fmt: skip
    """A finished one-process run of 4 orders (order 3 goes to Nibble only) whose vendors
    answered as `answers` says: (time, order, vendor or "all"); CPU burnt at one core."""
    keys = {"nibble": ["K0", "K1", "K2", "K3"], "custobar": ["K0", "K1", "K2", None]}
    records: dict[str, list[Any]] = {"nibble": [], "custobar": []}
    for at, order, which in answers:
        for vendor, vendor_keys in keys.items():
            if vendor_keys[order] is not None and which in ("all", vendor):
                records[vendor].append((at - 0.01, at, [vendor_keys[order]]))
    topic = Topic("bench-t", 1, [b""] * 4, {0: 4})
    log = tmp_path / "consumer.log"
    stamp = datetime.fromtimestamp(assigned, UTC).isoformat().replace("+00:00", "Z")
    log.write_text(json.dumps({"event": "consumer.assigned", "timestamp": stamp}) + "\n")
    ctx = Context("127.0.0.1:9", _Sink(records), topic, CodeTree("new", tmp_path, "a"),  # type: ignore[arg-type]
                  None, tmp_path, keys)  # type: ignore[arg-type]  # fmt: skip
    spec = ServiceSpec(20, paced_rate=2.0 if pacer_start else None)
    run = ServiceRun(ctx, spec, "1-1", lambda _: None)
    run.logs = [log]
    cpu = Series()
    for t in range(0, 201):
        cpu.add(t / 10, t / 10)  # one core busy from 0 to 20 s
    run.cpu, run.rss = {1: cpu}, {1: 80.0}
    if pacer_start is not None:
        pacer = type("P", (), {"started_at": pacer_start, "timestamps": {}})()
        run.pacer = pacer  # type: ignore[assignment]
    return run._result(0.0, finished, "per-destination groups", [0])


def test_a_run_is_timed_from_the_assignment_to_the_vendors_last_answer(tmp_path: Path) -> None:
    # Assigned at 2 s, answers until 6 s; the commits showed the end only at 6.4 s.
    result = _measured(tmp_path, assigned=2.0, finished=6.4,
                       answers=[(3.0, 0, "all"), (4.0, 1, "all"), (5.0, 2, "all"),
                                (6.0, 3, "all")])  # fmt: skip

    assert result.window_s == pytest.approx(4.0)
    assert result.orders_per_s == pytest.approx(4 / 4.0)
    assert result.cpu_us_per_order == pytest.approx(4.0 / 4 * 1e6)
    assert result.startup_s == pytest.approx(2.0)


def test_orders_every_vendor_had_answered_before_the_group_settled_are_left_out(
    tmp_path: Path,
) -> None:
    # Before the assignment at 2 s: order 0 done by both vendors, Nibble-only order 3 done,
    # order 1 by Nibble only (Custobar answers it at 4 s).
    result = _measured(tmp_path, assigned=2.0, finished=6.4,
                       answers=[(1.0, 0, "all"), (1.5, 3, "all"), (1.0, 1, "nibble"),
                                (4.0, 1, "custobar"), (6.0, 2, "all")])  # fmt: skip

    assert result.orders == 2  # orders 1 and 2
    assert result.orders_per_s == pytest.approx(2 / 4.0)


def test_a_paced_run_is_timed_from_its_first_paced_record(tmp_path: Path) -> None:
    # Assigned at 2 s, pacing from 7 s (the settle wait), answers until 9 s.
    result = _measured(tmp_path, assigned=2.0, finished=9.3, pacer_start=7.0,
                       answers=[(7.5, 0, "all"), (8.0, 1, "all"), (8.5, 2, "all"),
                                (9.0, 3, "all")])  # fmt: skip

    assert result.window_s == pytest.approx(2.0)
    assert result.orders_per_s == pytest.approx(2.0)
    assert result.cpu_us_per_order == pytest.approx(2.0 / 4 * 1e6)
    assert result.startup_s == pytest.approx(2.0)  # start-up is still spawn → assignment
    assert result.paced_rate == 2.0


def test_the_clean_up_on_an_external_cluster_deletes_only_this_bench_s_topics_and_groups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deleted: dict[str, list[str]] = {}

    class Admin:
        def __init__(self, _config: dict[str, Any]) -> None:
            pass

        def list_topics(self, timeout: float) -> Any:
            names = ["bench-1-ab", "bench-1-ab.dlq", "bench-1-ab-sweep", "bench-1-ab-paced-1-3",
                     "bench-1-abc", "bench-1-abc.dlq", "bench-1-ab2-sweep", "orders"]  # fmt: skip
            return type("Metadata", (), {"topics": dict.fromkeys(names)})()

        def delete_topics(self, topics: list[str]) -> dict[str, Any]:
            deleted["topics"] = topics
            return {}

        def delete_consumer_groups(self, groups: list[str]) -> dict[str, Any]:
            deleted["groups"] = groups
            return {}

    monkeypatch.setattr(stage, "AdminClient", Admin)
    monkeypatch.setattr(stage, "GROUPS_USED", set())
    group = stage.new_group()

    stage.remove_leftovers("127.0.0.1:9", "bench-1-ab")

    assert sorted(deleted["topics"]) == [
        "bench-1-ab", "bench-1-ab-paced-1-3", "bench-1-ab-sweep", "bench-1-ab.dlq"]  # fmt: skip
    assert sorted(deleted["groups"]) == sorted(
        [group, f"{group}-nibble", f"{group}-nudgify", f"{group}-custobar"]
    )


def test_a_stopped_pacer_produces_nothing_more(monkeypatch: pytest.MonkeyPatch) -> None:
    produced: list[int] = []

    class Producer:
        def __init__(self, _config: dict[str, Any]) -> None:
            pass

        def list_topics(self, *_: Any, **__: Any) -> None:
            pass

        def produce(self, *_: Any, **__: Any) -> None:
            produced.append(1)

        def poll(self, _timeout: float) -> int:
            return 0

        def flush(self, _timeout: float) -> int:
            return 0

    monkeypatch.setattr(paced, "Producer", Producer)
    pacer = paced.Pacer("127.0.0.1:9", "t", [b"x"] * 1_000_000, rate=10_000, count=1_000_000)
    pacer.start()
    while not produced:
        time.sleep(0.001)
    pacer.stop()
    pacer.join(2)
    assert not pacer.is_alive()
    at_stop = len(produced)
    time.sleep(0.05)
    assert len(produced) == at_stop < 1_000_000


def test_an_unreachable_external_cluster_is_said_in_one_line() -> None:
    with pytest.raises(stage.StageError, match=r"^no Kafka broker answers at 127\.0\.0\.1:1 "):
        stage.reachable("127.0.0.1:1", timeout_s=0.5)


def test_a_baseline_without_what_the_cpu_ceiling_harness_imports_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stage, "BASELINE_NEEDS", ("consumer/decode.py", "consumer/gone.py"))
    with pytest.raises(SystemExit):
        bench_main.parse(["--baseline", "HEAD"])
    assert ("--baseline HEAD: too old for this bench: it has no consumer/gone.py"
            in capsys.readouterr().err)  # fmt: skip
    monkeypatch.setattr(stage, "BASELINE_NEEDS", ("consumer/decode.py",))
    options, _ = bench_main.parse(["--baseline", "HEAD"])
    assert options.baseline == "HEAD"
