"""The reference model: what each vendor must HOLD, how often it may be sent each order, and
what the dead-letter topic must hold, after a stream of order-completed records.

Pure and small on purpose: no Kafka, clock or I/O. Each record's payload per destination comes
from the real transforms (`consumer.transform.*`) applied to the order the service reads (the
dict through the packaged Avro schema and `consumer.decode.to_order`); what a vendor
holds comes from the sandbox's fold of accepted uploads (`consumer.sandbox.holdings`, Custobar's
upsert). Everything else is written down here:

Per destination, each order's records are folded in topic order (one order's records share a
partition, so per-partition order is topic order for it):

1. A record that cannot be read (not Avro, or an order `to_order` refuses) is ONE dead letter
   with destination `*`, keyed by its partition and offset. Nothing else changes.
2. The destination's transform decides for each readable record:
   - `Skip`     → nothing changes for that destination.
   - `Invalid`  → that record is dead-lettered for that destination; nothing else changes.
   - a payload  → the record is *sendable*; rules 3 and 4 say what is sent.
3. Custobar (a re-upload updates the sale): a sendable record whose payload differs from the
   order's previous sendable payload is sent; an identical repeat sends nothing. So the sends of
   an order are its distinct consecutive payloads (A, B, A sends three times), and Custobar ends
   holding the payload of the LAST sendable record: a later CANCELLED/RETURNED is never
   swallowed. An upsert never deletes: a field or row that only an earlier payload had may
   linger, with a value an earlier payload gave it.
4. Nibble and Nudgify (no update endpoint, no cancel): the FIRST sendable record is sent and the
   vendor holds exactly that payload; later records (changed or not; a cancellation, which these
   transforms skip anyway) send nothing. Never two.
5. An order the vendor is told to reject (the sandbox's `reject_orders`): each send of rules 3
   and 4 becomes a dead letter for that destination instead (once per payload it would send),
   and the vendor holds nothing for the order.

Bounds the comparison (`problems`) applies:
- Sends per order per vendor are at most the sends of rules 3 and 4. A rewind or replay re-reads
  the topic but adds no record, so it allows no extra send.
- The one documented open window: a SIGKILL after a vendor's 2xx but before the ledger write
  re-sends each order in flight at the kill once more (the same payload for Nibble and
  Nudgify). So with `kills` > 0 an order may be sent up to `kills` more times, and in all at
  most `window` extra sends per vendor (concurrency x batch size x kills).
- Dead letters: the set of keys ((destination, order number), or (`*`, "partition@offset"))
  equals the model's; each key occurs at least once and at most as often as rules 1, 2 and 5
  dead-letter it (plus one per kill: a crash between the dead-letter write and the ledger write).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fastavro

from consumer.decode import to_order
from consumer.devenv.samples import encode_schemaless, load_schema
from consumer.errors import InvalidOrderError
from consumer.model import Invalid, Order, Skip, TransformResult
from consumer.sandbox.holdings import apply_custobar_rows
from consumer.transform import custobar, nibble, nudgify

VENDORS = ("nibble", "nudgify", "custobar")
RECORD = "*"  # the dead-letter destination of a record no destination could read
_MISSING = object()
_SCHEMA = load_schema()


@dataclass(frozen=True)
class Record:
    """One Kafka record of the stream: an order (an Avro-ready dict) or a poison value."""

    partition: int
    key: bytes | None
    order: dict[str, Any] | None = None  # None: `poison` is the record's value
    poison: bytes | None = None


@dataclass(frozen=True)
class Destinations:
    """The destination settings the transforms take, and the orders each vendor rejects."""

    report_all_sales: bool = True
    default_currency: str = "EUR"
    company: str = "COMPANY"
    reject: Mapping[str, frozenset[str]] = field(default_factory=dict)  # vendor → order numbers

    def transform(self, vendor: str, order: Order) -> TransformResult:
        if vendor == "nibble":
            return nibble.sale(order, report_all_sales=self.report_all_sales)
        if vendor == "nudgify":
            return nudgify.purchase(order)
        return custobar.rows(order, default_currency=self.default_currency, company=self.company)


@dataclass
class Expected:
    """The model's verdict on a stream. Keys are the sandbox's: order number for Nibble and
    Custobar, the `order_id` sent for Nudgify."""

    held: dict[str, dict[str, Any]]  # vendor → key → held state (as `/_sandbox/state/{vendor}`)
    earlier: dict[str, list[dict[str, Any]]]  # Custobar key → states of earlier payloads
    sends: dict[str, Counter[str]]  # vendor → key → at most this many sends
    dead_letters: Counter[tuple[str, str]]  # (destination, order number | "p@offset") → at most
    keys: dict[str, dict[str, str]]  # vendor → order number → vendor key


def jsonable(items: Sequence[Any]) -> list[Any]:
    """A payload as the vendor receives it: through JSON and back."""
    result: list[Any] = json.loads(json.dumps(list(items)))
    return result


def custobar_state(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One sale as Custobar holds it after these rows alone were uploaded."""
    sales: dict[str, Any] = {}
    apply_custobar_rows(sales, rows)
    return next(iter(sales.values()))


def vendor_key(vendor: str, order_number: str, payload: Sequence[Any]) -> str:
    return str(payload[0]["order_id"]) if vendor == "nudgify" else order_number


def expect(stream: Sequence[Record], destinations: Destinations = Destinations()) -> Expected:
    """Fold the stream (records in produce order) by the rules in the module docstring."""
    result = Expected(
        held={v: {} for v in VENDORS},
        earlier={},
        sends={v: Counter() for v in VENDORS},
        dead_letters=Counter(),
        keys={v: {} for v in VENDORS},
    )
    offsets: Counter[int] = Counter()
    partition_of: dict[str, int] = {}
    sent: dict[tuple[str, str], list[list[Any]]] = {}  # (vendor, order) → payloads of rules 3/4
    for record in stream:
        offset = offsets[record.partition]
        offsets[record.partition] += 1
        order = _readable(record)
        if order is None:
            result.dead_letters[(RECORD, f"{record.partition}@{offset}")] += 1
            continue
        number = order.order_number
        if partition_of.setdefault(number, record.partition) != record.partition:
            raise ValueError(f"order {number} on two partitions: its events must share one")
        for vendor in VENDORS:
            outcome = destinations.transform(vendor, order)
            if isinstance(outcome, Skip):
                continue
            if isinstance(outcome, Invalid):
                result.dead_letters[(vendor, number)] += 1
                continue
            payload = jsonable(outcome.items)
            result.keys[vendor].setdefault(number, vendor_key(vendor, number, payload))
            history = sent.setdefault((vendor, number), [])
            if vendor == "custobar":
                if not history or history[-1] != payload:
                    history.append(payload)  # rule 3: a distinct change is sent
            elif not history:
                history.append(payload)  # rule 4: the first sendable record only
    for (vendor, number), history in sent.items():
        key = result.keys[vendor][number]
        if number in destinations.reject.get(vendor, frozenset()):
            result.dead_letters[(vendor, number)] += len(history)  # rule 5
            continue
        result.sends[vendor][key] = len(history)
        if vendor == "custobar":
            result.held[vendor][key] = custobar_state(history[-1])
            result.earlier[key] = [custobar_state(p) for p in history[:-1]]
        else:
            result.held[vendor][key] = [history[0][0]]
    return result


def _readable(record: Record) -> Order | None:
    """The order the service reads: through the Avro schema and `to_order`; None if it cannot."""
    if record.order is None:
        return None
    body = io.BytesIO(encode_schemaless(record.order, _SCHEMA))
    try:
        return to_order(fastavro.schemaless_reader(body, _SCHEMA, _SCHEMA))
    except InvalidOrderError:
        return None


def problems(
    expected: Expected,
    *,
    state: Mapping[str, Mapping[str, Any]],
    sends: Mapping[str, Mapping[str, int]],
    dead_letters: Sequence[tuple[str, str]],
    kills: int = 0,
    window: int = 0,
) -> list[str]:
    """Every way the vendors' state (`/_sandbox/state`), the sends per key (accepted records)
    and the dead letters differ from the model, as readable lines; empty when they agree."""
    found: list[str] = []
    for vendor in VENDORS:
        want, got = expected.held[vendor], state.get(vendor, {})
        for key in sorted(set(want) | set(got)):
            if key not in got:
                found.append(f"{vendor} {key}: holds nothing, the model says {brief(want[key])}")
            elif key not in want:
                found.append(f"{vendor} {key}: holds {brief(got[key])}, the model says nothing")
            elif vendor == "custobar":
                found += _sale_problems(key, want[key], expected.earlier.get(key, []), got[key])
            else:
                found += _facts_problems(vendor, key, want[key], got[key], kills)
        found += _send_problems(
            vendor, expected.sends[vendor], sends.get(vendor, {}), kills, window
        )
    found += _dead_letter_problems(expected.dead_letters, Counter(dead_letters), kills)
    return found


def brief(held: Any) -> str:
    """A held state in a few words: a sale's state, total and row count; a fact list's size."""
    if isinstance(held, dict) and "transaction" in held:
        t = held["transaction"]
        return (f"sale {t.get('sale_state')} total {t.get('sale_total')} "
                f"with {len(held.get('rows', {}))} rows")  # fmt: skip
    if isinstance(held, list):
        return f"{len(held)} payload(s)"
    return repr(held)


def _facts_problems(
    vendor: str, key: str, want: list[Any], got: list[Any], kills: int
) -> list[str]:
    if any(payload != want[0] for payload in got):
        other = next(p for p in got if p != want[0])
        return [f"{vendor} {key}: holds {other}, the model says only {want[0]}"]
    if len(got) > 1 + kills:
        return [f"{vendor} {key}: holds the payload {len(got)} times, the model says once"]
    return []


def _sale_problems(
    key: str, want: dict[str, Any], earlier: list[dict[str, Any]], got: dict[str, Any]
) -> list[str]:
    """The last payload's fields and rows exactly; anything else only as an earlier payload."""
    found = _fields(
        f"custobar {key}",
        want["transaction"],
        got.get("transaction", {}),
        [e["transaction"] for e in earlier],
    )
    want_rows, got_rows = want["rows"], got.get("rows", {})
    for row_id in sorted(set(want_rows) | set(got_rows)):
        before = [e["rows"][row_id] for e in earlier if row_id in e["rows"]]
        if row_id not in got_rows:
            found.append(
                f"custobar {key}: row {row_id} missing, the model says {want_rows[row_id]}"
            )
        elif row_id in want_rows:
            found += _fields(
                f"custobar {key} row {row_id}", want_rows[row_id], got_rows[row_id], before
            )
        elif not before:
            found.append(f"custobar {key}: row {row_id} {got_rows[row_id]} was never in a payload")
        else:
            found += _fields(f"custobar {key} row {row_id}", {}, got_rows[row_id], before)
    if got.get("unkeyed_rows"):
        found.append(f"custobar {key}: rows without external_id {got['unkeyed_rows']}")
    return found


def _fields(
    where: str, want: Mapping[str, Any], got: Mapping[str, Any], earlier: list[Mapping[str, Any]]
) -> list[str]:
    found = []
    for name, value in want.items():
        if (held := got.get(name, _MISSING)) != value:
            shown = "nothing" if held is _MISSING else repr(held)
            found.append(f"{where}: {name} is {shown}, the last event says {value!r}")
    for name, value in got.items():
        if name not in want and all(e.get(name, _MISSING) != value for e in earlier):
            found.append(f"{where}: {name} is {value!r}, which no payload of the order had")
    return found


def _send_problems(
    vendor: str, allowed: Mapping[str, int], sent: Mapping[str, int], kills: int, window: int
) -> list[str]:
    found = []
    extra_total = 0
    for key in sorted(sent):
        extra = sent[key] - allowed.get(key, 0)
        if extra <= 0:
            continue
        extra_total += extra
        if extra > kills:
            bound = f"{allowed.get(key, 0)}" + (f" (+{kills} for kills)" if kills else "")
            found.append(f"{vendor} {key}: sent {sent[key]} times, the model allows {bound}")
    if kills and extra_total > window:
        found.append(
            f"{vendor}: {extra_total} re-sends after {kills} kills, the window is {window}"
        )
    return found


def _dead_letter_problems(
    allowed: Counter[tuple[str, str]], got: Counter[tuple[str, str]], kills: int
) -> list[str]:
    found = []
    for key in sorted(set(allowed) | set(got)):
        destination, subject = key
        if not got[key]:
            found.append(f"dead letter for {destination} {subject}: missing")
        elif not allowed[key]:
            found.append(f"dead letter for {destination} {subject}: unexpected ({got[key]}x)")
        elif got[key] > allowed[key] + kills:
            found.append(
                f"dead letter for {destination} {subject}: {got[key]}x, at most {allowed[key]}"
            )
    return found
