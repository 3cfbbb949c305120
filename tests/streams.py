"""Order-event streams for the model-based tests: what an order's later events look like, how
they interleave over partitions, and hypothesis strategies that draw them.

A stream is described by a small literal `StreamSpec` (so a failing example can be pasted back
as an `@example`): sample orders from `consumer.devenv.samples` (money stays consistent), each
with a *story* of later events (`OPS`: an exact repeat, a cancellation, a changed amount, ...),
and a *schedule* saying which order's next event comes next (`POISON` for an unreadable
record). `build` turns it into `tests.model.Record`s keyed by order number, each placed on the
partition librdkafka's default partitioner gives that key, so one order's events share one.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from consumer.devenv.samples import partition_for, sample_orders
from tests.model import Record

PARTITIONS = 3
POISON = -1  # a schedule entry: a record that is not Avro
BROKEN = -2  # a schedule entry: Avro, but an order whose total does not add up
OPS = (
    "cancel",  # COMPLETE → CANCELLED (Custobar must end CANCELLED; Nibble/Nudgify skip it)
    "repeat",  # the same event again, byte for byte
    "amount",  # the first line's quantity + 1, totals recomputed
    "return",
    "refund",
    "complete",  # back to COMPLETE (e.g. after a cancellation)
    "add_line",
    "drop_line",
    "address",  # another city and country: only Nudgify's payload changes
    "email",  # another e-mail address (or one where there was none)
    "revert",  # the event before the previous one again: a change, then its revert
    "bogus_state",  # a state Custobar has no sale_state for: Invalid for Custobar
    "drop_token",  # no Nibble session token: Invalid for a negotiated sale, else skipped
)


@dataclass(frozen=True)
class StreamSpec:
    """Orders `sample_orders(len(stories), seed=seed, prefix=prefix)`, order i followed by the
    events `stories[i]`; `schedule` interleaves them (i = order i's next event)."""

    seed: int
    stories: tuple[tuple[str, ...], ...]
    schedule: tuple[int, ...]
    prefix: str = "MS"


def story(base: dict[str, Any], ops: Sequence[str]) -> list[dict[str, Any]]:
    """The order's events: `base`, then one per op, each derived from the one before."""
    events = [base]
    for n, op in enumerate(ops):
        events.append(_apply(op, events, n))
    return events


def _apply(op: str, events: list[dict[str, Any]], n: int) -> dict[str, Any]:
    last = events[-1]
    if op == "repeat":
        return last
    if op == "revert":
        return events[-2] if len(events) > 1 else last
    order = copy.deepcopy(last)
    states = {"cancel": "CANCELLED", "return": "RETURNED", "refund": "REFUNDED",
              "complete": "COMPLETE", "bogus_state": "SHIPPED"}  # fmt: skip
    if op in states:
        order["state"] = states[op]
    elif op == "amount":
        order["lines"][0]["quantity"] += 1
    elif op == "add_line":
        extra = {**order["lines"][0], "product_id": "1403", "variant_id": "1403-M",
                 "sku": "SKU-1403", "name": "Bottle Cage", "quantity": 1,
                 "discount": Decimal(0), "nibble_id": None, "is_nibble_addon": False}  # fmt: skip
        order["lines"].append(extra)
    elif op == "drop_line":
        if len(order["lines"]) > 1:
            order["lines"].pop()
    elif op == "address":
        city = ("Tampere", "Pirkanmaa", "FI") if order["address"]["city"] != "Tampere" else \
            ("Porto", None, "PT")  # fmt: skip
        order["address"] = dict(zip(("city", "state", "country"), city, strict=True))
    elif op == "email":
        order["customer"]["email"] = f"changed{n}.{order['order_number'].lower()}@example.com"
    elif op == "drop_token":
        order["nibble_session_token"] = None
    else:
        raise ValueError(f"unknown op {op!r}")
    return consistent(order)


def consistent(order: dict[str, Any]) -> dict[str, Any]:
    """Totals that `to_order` accepts: line totals, then the order's, the discount capped."""
    for line in order["lines"]:
        line["total"] = line["unit_price"] * line["quantity"] - line["discount"]
    lines = sum((line["total"] for line in order["lines"]), Decimal(0))
    order["discount"] = min(order["discount"], lines)
    order["total"] = lines - order["discount"] + order["shipping"]
    return order


def order_numbers(spec: StreamSpec) -> list[str]:
    """The order numbers of the spec's orders, by index."""
    orders = sample_orders(len(spec.stories), seed=spec.seed, prefix=spec.prefix)
    return [order["order_number"] for order in orders]


def build(spec: StreamSpec) -> list[Record]:
    """The spec's records in produce order."""
    bases = sample_orders(len(spec.stories), seed=spec.seed, prefix=spec.prefix)
    pending = [story(base, ops) for base, ops in zip(bases, spec.stories, strict=True)]
    records: list[Record] = []
    for position, entry in enumerate(spec.schedule):
        if entry >= 0:
            order = pending[entry].pop(0)
            key = order["order_number"].encode()
            records.append(Record(partition_for(key, PARTITIONS), key, order))
        elif entry == BROKEN:
            (order,) = sample_orders(1, seed=position, prefix=f"{spec.prefix}X{position}")
            order = {**order, "total": order["total"] + Decimal("5.00")}
            key = order["order_number"].encode()
            records.append(Record(partition_for(key, PARTITIONS), key, order))
        else:
            key = f"poison-{position}".encode()
            value = b"\x07\x01\x02 not avro"
            records.append(Record(partition_for(key, PARTITIONS), key, poison=value))
    if any(pending_events for pending_events in pending):
        raise ValueError("the schedule leaves events of some orders unproduced")
    return records


def spread(stories: Sequence[Sequence[str]], rng: random.Random) -> tuple[int, ...]:
    """Orders in index order, each later event either right behind the one before it (within a
    few records: the same poll batch) or far behind it (up to 500 records later)."""
    placed: list[tuple[float, int]] = []
    for index, ops in enumerate(stories):
        at = float(index)
        placed.append((at, index))
        for _ in ops:
            at += rng.uniform(0.1, 3) if rng.random() < 0.5 else rng.uniform(3, 500)
            placed.append((at, index))
    return tuple(index for _, index in sorted(placed))


# hypothesis ---------------------------------------------------------------------------------
def ops(*, max_size: int) -> st.SearchStrategy[tuple[str, ...]]:
    """An order's later events: often none, state changes and repeats the most common."""
    common = st.sampled_from(("cancel", "repeat", "amount", "return", "complete"))
    any_op = st.sampled_from(OPS)
    return st.lists(st.one_of(common, any_op), max_size=max_size).map(tuple)


@st.composite
def stream_specs(
    draw: st.DrawFn, *, max_orders: int = 6, max_later: int = 3, max_poison: int = 1
) -> StreamSpec:
    """Small streams: a few orders, each with up to `max_later` later events, interleaved by
    the draw (shrinks towards one order after another), with up to `max_poison` bad records."""
    count = draw(st.integers(1, max_orders))
    stories = tuple(draw(ops(max_size=max_later)) for _ in range(count))
    remaining = [1 + len(s) for s in stories]
    bad = draw(st.lists(st.sampled_from((POISON, BROKEN)), max_size=max_poison))
    schedule: list[int] = []
    while any(remaining) or bad:
        choices = [i for i, left in enumerate(remaining) if left] + (["bad"] if bad else [])
        pick = choices[draw(st.integers(0, len(choices) - 1))]
        if pick == "bad":
            schedule.append(bad.pop())
        else:
            schedule.append(int(pick))
            remaining[int(pick)] -= 1
    seed = draw(st.integers(0, 10_000))
    return StreamSpec(seed, stories, tuple(schedule))
