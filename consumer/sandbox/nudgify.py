"""Nudgify stand-in: `POST /api/purchases` with `Authorization: Bearer <API key>`.

Answers as the "Purchases" doc says: 401 `{"message": "Unauthenticated."}`; 400
`{"message": "Bad Request.", "errors": {"orders.0.email": ["Email is required."]}}` with the
doc's messages; 403 for a site key of another account or a disabled REST API; 402 on the Lite
plan; 200 `{"message": "Request successfully saved.", "data": ["142", ...]}`. Choices:
- `email` is required: the doc's table leaves its "Required?" cell empty but its error list has
  "Email is required", and that list is what the server enforces.
- `order_id` follows Laravel's `integer` rule, which the doc's own example relies on ("1111"): an
  integer or a string of digits; not a fraction, boolean or other text.
- The email format message is reproduced as the doc prints it ("... format [email protected]").
- Field errors are checked first (400), then whether the site key belongs to the account (403),
  then the account's plan and REST API switches (402/403).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.sandbox.settings import SandboxSettings
from consumer.sandbox.state import Accepted, SandboxState

EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]{2,}")
INTEGER = re.compile(r"[+-]?\d+")
LETTERS = re.compile(r"[A-Za-z]+")
OPTIONAL_STRINGS = ("first_name", "last_name", "ip", "city", "state")
ITEM_STRINGS = ("item_id", "item_variation_id", "item_name")
ITEM_URLS = ("item_link", "image_url")
ACCOUNT_STATES = {
    "lite": (402, "Upgrade your plan to use the REST API"),
    "api_not_enabled": (403, "Forbidden, REST API integration is not enabled"),
    "nudges_not_configured": (
        403,
        "Please configure the REST API to the nudges in order to use this data",
    ),
    "api_disabled": (403, "REST API integration is disabled on your site. Please contact support"),
}


def check_purchases(body: Any) -> dict[str, list[str]]:
    """Field errors keyed like Laravel's validator ("orders.0.email"); empty when valid."""
    errors: dict[str, list[str]] = {}
    if not isinstance(body, dict):
        return {"orders": ["Orders is required."]}
    site_key = body.get("site_key")
    if site_key in (None, ""):
        errors["site_key"] = ["Site key is required."]
    elif not isinstance(site_key, str) or not _is_uuid(site_key):
        errors["site_key"] = ["Site key must be valid."]
    orders = body.get("orders")
    if orders in (None, []):
        errors["orders"] = ["Orders is required."]
    elif not isinstance(orders, list):
        errors["orders"] = ["Orders must be an array."]
    else:
        for index, order in enumerate(orders):
            errors.update(check_order(order, f"orders.{index}"))
    return errors


def check_order(order: Any, at: str) -> dict[str, list[str]]:
    if not isinstance(order, dict):
        return {at: ["Order must be an object."]}
    errors: dict[str, list[str]] = {}

    def add(field: str, message: str) -> None:
        errors.setdefault(f"{at}.{field}", []).append(message)

    order_id = order.get("order_id")
    if order_id is None or order_id == "":
        add("order_id", "Order id is required.")
    elif not _is_integer(order_id):
        add("order_id", "Order id must be an integer.")
    date = order.get("date")
    if date is None or date == "":
        add("date", "Date is required.")
    elif not isinstance(date, str) or not _is_sql_datetime(date):
        add("date", "Date does not match the required UTC format.")
    email = order.get("email")
    if email is None or email == "":
        add("email", "Email is required.")
    elif not isinstance(email, str) or not EMAIL.fullmatch(email):
        add("email", "Email does not match the required format [email protected]")
    for name in OPTIONAL_STRINGS:
        if order.get(name) is not None and not isinstance(order[name], str):
            add(name, f"{name.replace('_', ' ').capitalize()} must be a string.")
    if "country" in order:
        country = order["country"]
        if not isinstance(country, str):
            add("country", "Country must be a string.")
        else:
            if not LETTERS.fullmatch(country):
                add("country", "Country can only contain letters.")
            if len(country) > 2:
                add("country", "Country may not be greater than 2 characters.")
    items = order.get("line_items")
    if items is not None:
        if not isinstance(items, list):
            add("line_items", "Line items must be an array.")
        else:
            for index, item in enumerate(items):
                errors.update(check_line_item(item, f"{at}.line_items.{index}"))
    return errors


def check_line_item(item: Any, at: str) -> dict[str, list[str]]:
    if not isinstance(item, dict):
        return {at: ["Line item must be an object."]}
    errors: dict[str, list[str]] = {}
    for name in (*ITEM_STRINGS, *ITEM_URLS):
        value = item.get(name)
        label = name.replace("_", " ").capitalize()
        if value is None:
            continue
        if not isinstance(value, str):
            errors[f"{at}.{name}"] = [f"{label} must be a string."]
        elif name in ITEM_URLS and not _is_url(value):
            errors[f"{at}.{name}"] = [f"{label} must be a valid URL."]
    return errors


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return (
        isinstance(value, str)
        and INTEGER.fullmatch(value) is not None
        and -(2**63) <= int(value) < 2**63
    )


def _is_sql_datetime(value: str) -> bool:
    if len(value) != 19:
        return False
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M:%S").strftime("%Y-%m-%d %H:%M:%S") == value
    except ValueError:
        return False


def _is_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _declares_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() == "application/json"


def bad_request(errors: dict[str, list[str]]) -> JSONResponse:
    return JSONResponse({"message": "Bad Request.", "errors": errors}, 400)


class NudgifyApi:
    def __init__(self, settings: SandboxSettings, state: SandboxState) -> None:
        self._settings = settings
        self._book = state.book("nudgify")
        self._next_id = 142

    def routes(self) -> list[Route]:
        return [Route("/api/purchases", self.purchases, methods=["POST"])]

    async def purchases(self, request: Request) -> Response:
        book = self._book
        if (failure := await book.injected_failure(request, _unauthenticated)) is not None:
            return failure
        if request.headers.get("authorization") != f"Bearer {self._settings.nudgify_api_key}":
            return book.rejected(_unauthenticated())
        try:
            # Like Laravel, a body not declared as JSON is read as no input at all.
            body = await request.json() if _declares_json(request) else {}
        except ValueError:
            body = {}
        if errors := check_purchases(body):
            return book.rejected(bad_request(errors))
        if body["site_key"].lower() != self._settings.nudgify_site_key.lower():
            return book.rejected(
                JSONResponse({"message": "Authorization Failure, Invalid Site Key"}, 403)
            )
        if (account := ACCOUNT_STATES.get(book.faults.account_state)) is not None:
            status, message = account
            return book.rejected(JSONResponse({"message": message}, status))
        keys = [str(int(order["order_id"])) for order in body["orders"]]
        await book.hold(keys)
        if rejected := book.rejected_keys(keys):
            return book.rejected(
                bad_request(
                    {
                        f"orders.{i}.email": [
                            "Email does not match the required format [email protected]"
                        ]
                        for i in rejected
                    }
                )
            )
        ids = [str(self._next_id + i) for i in range(len(keys))]
        self._next_id += len(keys)
        book.accept(
            request, len(keys), [Accepted(k, o) for k, o in zip(keys, body["orders"], strict=True)]
        )
        return JSONResponse({"message": "Request successfully saved.", "data": ids})


def _unauthenticated() -> Response:
    return JSONResponse({"message": "Unauthenticated."}, 401)
