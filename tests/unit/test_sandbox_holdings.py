"""What a vendor account holds after the uploads the sandbox accepted (`/_sandbox/state`)."""

from __future__ import annotations

from typing import Any

from consumer.sandbox.holdings import held

ROW_1 = {"sale_external_id": "1000", "sale_customer_id": "A501", "sale_state": "COMPLETE",
         "sale_total": 5160, "COMPANY__sales_person": "3", "external_id": "1000-1",
         "product_id": "SKU0435", "unit_price": 1200, "quantity": 1, "total": 1200}  # fmt: skip
ROW_2 = {"sale_external_id": "1000", "external_id": "1000-2", "product_id": "SKU3429",
         "unit_price": 2080, "quantity": 2, "discount": 200, "total": 3960}  # fmt: skip


def accepted(*uploads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Custobar records as the sandbox files them: one per sale per accepted request."""
    records = []
    for rows in uploads:
        for sale_id in dict.fromkeys(r["sale_external_id"] for r in rows):
            sale = [r for r in rows if r["sale_external_id"] == sale_id]
            records.append({"key": sale_id, "payload": {"rows": sale, "complete": True}})
    return records


def test_custobar_holds_one_sale_with_its_transaction_fields_and_rows_by_external_id() -> None:
    state = held("custobar", accepted([ROW_1, ROW_2]))
    sale = state["1000"]
    assert sale["transaction"] == {"sale_external_id": "1000", "sale_customer_id": "A501",
                                   "sale_state": "COMPLETE", "sale_total": 5160,
                                   "COMPANY__sales_person": "3"}  # fmt: skip
    assert set(sale["rows"]) == {"1000-1", "1000-2"}
    assert sale["rows"]["1000-2"]["quantity"] == 2
    assert "sale_state" not in sale["rows"]["1000-1"]


def test_a_custobar_re_upload_updates_the_sale_and_its_rows_instead_of_adding_a_second() -> None:
    cancelled = {**ROW_1, "sale_state": "CANCELLED", "quantity": 3}
    state = held("custobar", accepted([ROW_1, ROW_2], [cancelled]))
    sale = state["1000"]
    assert sale["transaction"]["sale_state"] == "CANCELLED"
    assert sale["rows"]["1000-1"]["quantity"] == 3
    assert sale["rows"]["1000-2"] == {k: v for k, v in ROW_2.items() if k != "sale_external_id"}


def test_transaction_fields_on_any_row_update_the_transaction() -> None:
    later = {**ROW_2, "sale_state": "CANCELLED"}  # on the second row this time
    state = held("custobar", accepted([ROW_1, ROW_2], [later]))
    assert state["1000"]["transaction"]["sale_state"] == "CANCELLED"
    assert state["1000"]["transaction"]["sale_total"] == 5160  # not re-sent: kept


def test_custobar_rows_without_external_id_are_appended_as_the_docs_second_example() -> None:
    bare = [{k: v for k, v in row.items() if k != "external_id"} for row in (ROW_1, ROW_2)]
    state = held("custobar", accepted(bare, bare))
    assert state["1000"]["rows"] == {}
    assert len(state["1000"]["unkeyed_rows"]) == 4


def test_nibble_and_nudgify_hold_every_accepted_payload_as_its_own_fact() -> None:
    records = [{"key": "SO-1", "payload": {"n": 1}}, {"key": "SO-2", "payload": {"n": 2}},
               {"key": "SO-1", "payload": {"n": 1}}]  # fmt: skip
    assert held("nibble", records) == {"SO-1": [{"n": 1}, {"n": 1}], "SO-2": [{"n": 2}]}
    assert held("nudgify", records[:1]) == {"SO-1": [{"n": 1}]}
