"""Custobar stand-in: `POST /api/sales/upload/` with `Authorization: Token <t>`, `Bearer <key>`
or HTTP Basic; success `{"response": "ok"}`, failure `{"error": {"reason": ...}}` (what the
official plugins read).

Validation follows "Sales upload" field by field:
- Every row: `sale_external_id`; `product_id` (or `product_sku`/`product_ean`); `quantity` a
  number; `unit_price` in integer cents, unless `unit_price_in_currency` with `sale_currency`,
  or the sale's `sale_total`, stands in for it.
- Money fields are integers (cents), never fractions; `sale_currency` and `sale_exchange_rate`
  come together; `sale_state` is one of the documented enum (so "CANCELED", the prose's
  spelling, is refused); `sale_date` is a date or an ISO 8601 date-time.
- Unknown fields are refused (a misspelt `sale_exchange_rage` would otherwise vanish silently);
  company-specific fields are `<COMPANY>__<field>`.
- `sale_date` and a customer identifier are mandatory per transaction, but rows merge with
  earlier uploads of the same `sale_external_id` (the doc's first example sends sale 5000 with
  neither), so a transaction missing them here is accepted and counted as `incomplete` in the
  record and the stats instead of refused.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.sandbox.settings import SandboxSettings
from consumer.sandbox.state import Accepted, SandboxState

STATES = ("NEW", "PENDING_PAYMENT", "PROCESSING", "COMPLETE", "CANCELLED", "CLOSED", "HOLDED")
SALE_MONEY = ("sale_discount", "sale_shipping", "sale_shipping_in_currency", "sale_total")
ROW_MONEY = ("unit_price", "discount", "total", "unit_price_in_currency")
SALE_TEXT = (
    "sale_external_id",
    "sale_customer_id",
    "sale_phone_number",
    "sale_email",
    "sale_currency",
    "sale_payment_method",
    "sale_shipping_method",
    "sale_shop_id",
    "sale_state",
    "sale_date",
)
ROW_TEXT = ("external_id", "product_id", "product_sku", "product_ean")
LISTS = ("sale_coupon_codes", "tags")
KNOWN = {*SALE_MONEY, *ROW_MONEY, *SALE_TEXT, *ROW_TEXT, *LISTS, "quantity", "sale_exchange_rate"}
COMPANY_FIELD = re.compile(r"[A-Za-z0-9]+__\w+")
CUSTOMER_IDS = ("sale_customer_id", "sale_phone_number", "sale_email")


def sale_rows(body: Any) -> list[Any] | str:
    """The rows of an upload (a bare list or `{"sales": [...]}`), or why there are none."""
    rows = body.get("sales") if isinstance(body, dict) else body
    if not isinstance(rows, list) or not rows:
        return "Expected a non-empty list of sales, or an object with a 'sales' list."
    return rows


def check_rows(rows: Sequence[Any]) -> str | None:
    """The reason Custobar would refuse these rows, or None when they are valid."""
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"sales[{index}]: a sale row must be an object"
        if (problem := check_row(row)) is not None:
            return f"sales[{index}]: {problem}"
    for sale_id, sale in transactions(rows).items():
        merged = _merged(sale)
        if ("sale_currency" in merged) != ("sale_exchange_rate" in merged):
            return f"sale {sale_id}: sale_currency must be defined together with sale_exchange_rate"
        for row in sale:
            priced = "unit_price" in row or "sale_total" in merged
            in_currency = "unit_price_in_currency" in row and "sale_currency" in merged
            if not priced and not in_currency:
                return f"sale {sale_id}: unit_price is mandatory for every sale row"
            if "unit_price_in_currency" in row and "sale_currency" not in merged:
                return f"sale {sale_id}: unit_price_in_currency requires sale_currency"
    return None


def check_row(row: dict[str, Any]) -> str | None:
    for name in row:
        if name not in KNOWN and not COMPANY_FIELD.fullmatch(name):
            return f"unknown field {name!r}"
    if not isinstance(row.get("sale_external_id"), str) or not row["sale_external_id"]:
        return "sale_external_id is mandatory"
    if not any(
        isinstance(row.get(n), str) and row[n] for n in ("product_id", "product_sku", "product_ean")
    ):
        return "product_id is mandatory"
    quantity = row.get("quantity")
    if quantity is None:
        return "quantity is mandatory"
    if isinstance(quantity, bool) or not isinstance(quantity, int | float):
        return "quantity must be a number"
    for name in (*SALE_TEXT, *ROW_TEXT):
        if name in row and not isinstance(row[name], str):
            return f"{name} must be a string"
    for name in (*SALE_MONEY, *ROW_MONEY):
        if name in row and (isinstance(row[name], bool) or not isinstance(row[name], int)):
            return f"{name} must be an integer amount in cents"
    for name in LISTS:
        if name in row and not (
            isinstance(row[name], list) and all(isinstance(v, str) for v in row[name])
        ):
            return f"{name} must be a list of strings"
    rate = row.get("sale_exchange_rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0
    ):
        return "sale_exchange_rate must be a positive number"
    if "sale_state" in row and row["sale_state"] not in STATES:
        return f"sale_state must be one of {', '.join(STATES)}"
    if "sale_date" in row and not _is_date(row["sale_date"]):
        return "sale_date must be a date or an ISO 8601 date and time"
    return None


def transactions(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["sale_external_id"], []).append(row)
    return grouped


def is_complete(sale: Sequence[dict[str, Any]]) -> bool:
    """Carries the transaction's mandatory `sale_date` and a customer identifier."""
    merged = _merged(sale)
    return "sale_date" in merged and any(merged.get(name) for name in CUSTOMER_IDS)


def _merged(sale: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A transaction's fields, whichever of its rows carries them."""
    return {k: v for row in sale for k, v in row.items()}


def _is_date(value: str) -> bool:
    try:
        if len(value) == 10:
            date.fromisoformat(value)
        else:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _error(reason: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": {"reason": reason}}, status)


class CustobarApi:
    def __init__(self, settings: SandboxSettings, state: SandboxState) -> None:
        self._settings = settings
        self._book = state.book("custobar")

    def routes(self) -> list[Route]:
        return [Route("/api/sales/upload/", self.upload, methods=["POST"])]

    def _authorized(self, request: Request) -> bool:
        s = self._settings
        basic = base64.b64encode(f"{s.custobar_user}:{s.custobar_password}".encode()).decode()
        return request.headers.get("authorization") in (
            f"Token {s.custobar_token}",
            f"Bearer {s.custobar_token}",
            f"Basic {basic}",
        )

    async def upload(self, request: Request) -> Response:
        book = self._book
        if (failure := await book.injected_failure(request, _unauthorized)) is not None:
            return failure
        if not self._authorized(request):
            return book.rejected(
                _error("Authentication credentials were not provided or are invalid.", 401)
            )
        try:
            rows = sale_rows(await request.json())
        except ValueError:
            return book.rejected(_error("Request body must be JSON."))
        if isinstance(rows, str):
            return book.rejected(_error(rows))
        if (problem := check_rows(rows)) is not None:
            return book.rejected(_error(problem))
        sales = transactions(rows)
        keys = list(sales)
        await book.hold(keys)
        if rejected := book.rejected_keys(keys):
            return book.rejected(_error(f"sale {keys[rejected[0]]}: rejected by the sandbox"))
        accepted = []
        for key, sale in sales.items():
            complete = is_complete(sale)
            book.counters["incomplete"] += not complete
            accepted.append(Accepted(key, {"rows": sale, "complete": complete}))
        book.accept(request, len(rows), accepted)
        return JSONResponse({"response": "ok"})


def _unauthorized() -> Response:
    return _error("Invalid token.", 401)
