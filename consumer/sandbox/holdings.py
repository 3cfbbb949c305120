"""What each vendor account HOLDS after the uploads it accepted: the final state per order, the
way the real vendor would show it, folded from the accepted records in the order they were
accepted. `GET /_sandbox/state/{vendor}` serves it; the reference model (tests) uses the same
fold to say what a vendor must hold.

- Custobar upserts (its "Sales upload" doc and NOTES.md: a re-upload with the same
  `sale_external_id`/`external_id` updates the sale). A sale is its transaction fields
  (`sale_*` and company-specific `<COMPANY>__field`s, from whichever row carries them; a later
  row's value replaces an earlier one) and its rows keyed by `external_id` (a re-uploaded row's
  fields replace the earlier values of the same fields). Rows without an `external_id` cannot
  be matched, so each one is appended (the doc's second example).
- Nibble and Nudgify have no update endpoint: every accepted sale or purchase is a new fact.
  An order holds the list of payloads accepted for it, in order; a length above one is a
  duplicate the vendor now shows twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from consumer.sandbox.custobar import COMPANY_FIELD

HOLDING_VENDORS = ("nibble", "nudgify", "custobar")


def held(vendor: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The vendor's final state per order key, from its accepted records (oldest first)."""
    if vendor == "custobar":
        sales: dict[str, Any] = {}
        for record in records:
            apply_custobar_rows(sales, record["payload"]["rows"])
        return sales
    return facts(records)


def facts(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Nibble, Nudgify: per key, every payload accepted for it."""
    found: dict[str, list[Any]] = {}
    for record in records:
        found.setdefault(record["key"], []).append(record["payload"])
    return found


def is_transaction_field(name: str) -> bool:
    """`sale_*` and company-specific fields apply to the whole transaction."""
    return name.startswith("sale_") or COMPANY_FIELD.fullmatch(name) is not None


def apply_custobar_rows(sales: dict[str, Any], rows: Iterable[Mapping[str, Any]]) -> None:
    """Upsert accepted sale rows into `sales` (sale_external_id → sale), as Custobar does."""
    for row in rows:
        sale = sales.setdefault(
            row["sale_external_id"], {"transaction": {}, "rows": {}, "unkeyed_rows": []}
        )
        line = {}
        for name, value in row.items():
            if is_transaction_field(name):
                sale["transaction"][name] = value
            else:
                line[name] = value
        row_id = row.get("external_id")
        if row_id is None:
            sale["unkeyed_rows"].append(line)
        else:
            sale["rows"].setdefault(row_id, {}).update(line)
