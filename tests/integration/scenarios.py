"""Model scenarios played against the REAL service: produce chunks of a generated stream, run the
consumer (in-process until idle, as an OS process SIGKILLed mid-run, or as two members of one
group), rewind it, switch vendor faults on and off, and after every run compare what the vendor
sandbox holds, how often each order was sent and what was dead-lettered with `tests.model`.

Every interaction with the service goes through a `Stage` helper (run_in_process, spawn,
kill_mid_run, run_members, rewind, dead_letter_keys), so a change in how the service is run is
made there, once. Only outcomes are asserted: vendor state, sends, dead letters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from consumer.sandbox.control import SandboxControl
from tests.integration.conftest import Stage
from tests.model import VENDORS, Destinations, Record, expect, problems
from tests.streams import StreamSpec, build, order_numbers, stream_specs

BATCH, CONCURRENCY = 5, 2
SERVICE_ENV = {
    "CONSUMER_NIBBLE_BATCH_SIZE": str(BATCH),
    "CONSUMER_NUDGIFY_BATCH_SIZE": str(BATCH),
    "CONSUMER_CUSTOBAR_BATCH_SIZE": str(BATCH),
    "CONSUMER_CONCURRENT_REQUESTS": str(CONCURRENCY),
    # A claim of a SIGKILLed process is taken over after this (the open window), not 120 s;
    # a lease must outlive two request deadlines.
    "CONSUMER_CLAIM_LEASE_S": "5",
    "CONSUMER_HTTP_TIMEOUT_S": "2.5",
    "CONSUMER_SHUTDOWN_GRACE_S": "5",
}
FAULTS: dict[str, dict[str, Any]] = {
    "errors": {"error_rate": 0.3, "error_status": 503},
    "rate_limit": {"rate_limit_rate": 0.3, "retry_after_s": 0.2},
}
IDLE_EXIT_S = 1.5


@dataclass(frozen=True)
class Scenario:
    """A stream and what happens while it is consumed. Steps, in order:

    ("produce", n)           the next n records of the stream
    ("run",)                 the consumer in-process until idle, then compare with the model
    ("rewind", target)       `consumer rewind <target>` (earliest; offset:N once all produced
                             records were consumed: the same N on every partition), then run
    ("faults", vendor, kind) transient vendor faults from now on (`FAULTS`: errors, rate_limit)
    ("calm",)                no transient faults from now on
    ("kill",)                a consumer process SIGKILLed mid-run, then ("run",)
    ("members", n)           n consumer processes in one group until idle, then ("run",)

    Whatever is left is produced and run at the end. `reject` names (vendor, order index)
    pairs the vendor refuses throughout; `env` adds CONSUMER_ settings to every run."""

    stream: StreamSpec
    steps: tuple[tuple[Any, ...], ...] = ()
    reject: tuple[tuple[str, int], ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # service settings on top of SERVICE_ENV

    @property
    def needs_shared_ledger(self) -> bool:
        return any(step[0] == "members" for step in self.steps)


class Player:
    """Plays a scenario on a stage and compares the outcome with the model after every run."""

    def __init__(
        self, stage: Stage, sandbox: SandboxControl, scenario: Scenario, **env: str
    ) -> None:
        self.stage, self.sandbox, self.scenario = stage, sandbox, scenario
        self.env = {**SERVICE_ENV, **dict(scenario.env), **env}
        self.records = build(scenario.stream)
        self.produced = self.consumed = 0
        self.kills = 0
        self.log: list[str] = []
        numbers = order_numbers(scenario.stream)
        rejected: dict[str, set[str]] = {v: set() for v in VENDORS}
        for vendor, index in scenario.reject:
            rejected[vendor].add(numbers[index])
        self.destinations = Destinations(reject={v: frozenset(n) for v, n in rejected.items()})
        keys = expect(self.records).keys
        self.rejected_keys = {v: sorted(keys[v][n] for n in rejected[v] if n in keys[v])
                              for v in VENDORS}  # fmt: skip
        self.transient: dict[str, dict[str, Any]] = {v: {} for v in VENDORS}
        self._apply_faults()

    def play(self) -> None:
        for step in self.scenario.steps:
            self.log.append(repr(step))
            getattr(self, step[0])(*step[1:])
        if self.consumed < len(self.records):
            self.log.append("(the rest, then run)")
            self.produce(len(self.records) - self.produced)
            self.run()

    # steps ---------------------------------------------------------------------------------
    def produce(self, count: int) -> None:
        chunk = self.records[self.produced : self.produced + count]
        self.stage.produce_records(chunk)
        self.produced += len(chunk)

    def run(self) -> None:
        self.stage.run_in_process(idle_exit_s=IDLE_EXIT_S, **self.env)
        self.consumed = self.produced
        self.check()

    def rewind(self, target: str) -> None:
        if self.consumed == 0 or (target != "earliest" and self.consumed < self.produced):
            # `offset:N` is the same N on every partition: only a rewind once the group has
            # consumed everything (before, it could skip records never read). And a rewind
            # needs a ledger, which the first run creates (the CLI never does).
            self.run()
        self.stage.rewind(target, **self.env)
        self.run()

    def faults(self, vendor: str, kind: str) -> None:
        self.transient[vendor] = FAULTS[kind]
        self._apply_faults()

    def calm(self) -> None:
        self.transient = {v: {} for v in VENDORS}
        self._apply_faults()

    def kill(self) -> None:
        before = self._accepted()
        self._apply_faults(latency_ms=150)  # so that requests are in flight at the kill
        work_left = self.consumed < self.produced  # else it is killed idle, after a while
        self.stage.kill_mid_run(lambda: self._accepted() > before,
                                timeout_s=15 if work_left else 3, **self.env)  # fmt: skip
        self.kills += 1
        self._apply_faults()
        self.run()

    def members(self, count: int) -> None:
        codes = self.stage.run_members(count, idle_exit_s=2, **self.env)
        assert codes == [0] * count, codes
        self.run()

    # the comparison ------------------------------------------------------------------------
    def check(self) -> None:
        stream = self.records[: self.produced]
        expected = expect(stream, self.destinations)
        state = {v: self.sandbox.state(v) for v in VENDORS}
        sends = {v: Counter(r["key"] for r in self.sandbox.records(v)) for v in VENDORS}
        letters = self.stage.dead_letter_keys(len(expected.dead_letters), timeout_s=15)
        found = problems(expected, state=state, sends=sends, dead_letters=letters,
                         kills=self.kills, window=self.kills * BATCH * CONCURRENCY)  # fmt: skip
        assert not found, self.report(found, stream)

    def report(self, found: list[str], stream: Sequence[Record]) -> str:
        shown = "\n  ".join(found[:25]) + (
            f"\n  ... {len(found) - 25} more" if len(found) > 25 else ""
        )
        return (f"the service and the model disagree ({len(found)}) after steps "
                f"{' → '.join(self.log)}:\n  {shown}\nstream (partition@offset):\n"
                f"{describe(stream)}\nscenario: {self.scenario!r}")  # fmt: skip

    def _accepted(self) -> int:
        stats = self.sandbox.stats()
        return sum(int(stats[v]["items"]) for v in VENDORS)

    def _apply_faults(self, **extra: Any) -> None:
        for vendor in VENDORS:
            self.sandbox.set_faults(vendor, **self.transient[vendor], **extra,
                                    reject_orders=self.rejected_keys[vendor])  # fmt: skip


def describe(stream: Sequence[Record]) -> str:
    """The stream as a table: where each record sits and what it says."""
    offsets: Counter[int] = Counter()
    lines = []
    for record in stream:
        where = f"{record.partition}@{offsets[record.partition]}"
        offsets[record.partition] += 1
        order = record.order
        if order is None:
            lines.append(f"  {where:>6}  poison {record.poison!r}")
            continue
        quantities = ",".join(str(line["quantity"]) for line in order["lines"])
        lines.append(f"  {where:>6}  {order['order_number']}  {order['state']:<9} "
                     f"total {order['total']} {order['currency']}  quantities {quantities}  "
                     f"email {order['customer']['email']}  city {order['address']['city']}  "
                     f"token {'yes' if order['nibble_session_token'] else 'no'}")  # fmt: skip
    return "\n".join(lines)


# hypothesis ---------------------------------------------------------------------------------
IN_PROCESS_STEPS = (
    ("run",),
    ("rewind", "earliest"),
    ("rewind", "offset:1"),
    ("faults", "custobar", "errors"),
    ("faults", "nibble", "rate_limit"),
    ("faults", "nudgify", "errors"),
    ("calm",),
)
PROCESS_STEPS = (("kill",), ("members", 2))


@st.composite
def scenarios(
    draw: st.DrawFn, *, max_orders: int, max_later: int, processes: bool, max_poison: int = 1
) -> Scenario:
    """A stream produced in chunks (shrinks towards one chunk: a backlog), each chunk followed by
    a few steps; sometimes an order a vendor rejects throughout."""
    stream = draw(stream_specs(max_orders=max_orders, max_later=max_later, max_poison=max_poison))
    choices = IN_PROCESS_STEPS + (PROCESS_STEPS if processes else ())
    steps: list[tuple[Any, ...]] = []
    left = len(stream.schedule)
    while left:
        chunk = left + 1 - draw(st.integers(1, left))  # 1 → all that is left
        steps.append(("produce", chunk))
        left -= chunk
        if left:
            steps += draw(st.lists(st.sampled_from(choices), max_size=2))
    if processes and not any(step in PROCESS_STEPS for step in steps):
        steps.append(draw(st.sampled_from(PROCESS_STEPS)))
    orders = len(stream.stories)
    reject = draw(st.lists(st.tuples(st.sampled_from(VENDORS), st.integers(0, orders - 1)),
                           max_size=1, unique=True))  # fmt: skip
    return Scenario(stream, tuple(steps), tuple(reject))
