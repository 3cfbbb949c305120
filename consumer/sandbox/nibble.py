"""Nibble stand-in: report sale (`POST /v1/sales`), create session (`POST /v1/session`) and get
session (`GET /v1/session/{nibbleId}`), with X-Api-Key + X-Nibble-Api-Secret.

Validation follows "Report Sale", "Create Nibble" and "Get Session" field by field. Errors are
`{"errorMessage": ...}` in the doc's style ("order_number must be specified"); like the doc's
example they name the field, not the sale. Choices where the doc is ambiguous:
- `isNibbleAddonItem` is "Yes" (required) in the item table but absent from the doc's own
  example: the sandbox checks it is a boolean when present and accepts it absent.
- `purchase_date_time` must carry a zone (Z or an offset); minutes-only ("2023-04-21T14:30Z",
  the doc's example) is accepted.
- Create session: the table says `original_price` and `max_quantity`; the example body uses
  `product_price` and `maxQuantity`. Both spellings are accepted.
- Unknown paths answer like Nibble's API gateway: 403 `{"message": "Missing Authentication Token"}`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.sandbox.settings import SandboxSettings
from consumer.sandbox.state import Accepted, SandboxState

MAX_SALES = 50
ISO_DATETIME = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)"
)
CURRENCY = re.compile(r"[A-Z]{3}")
DECIMAL = re.compile(r"-?\d+(?:\.\d+)?")
NIBBLE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_sales(body: Any) -> str | None:
    """The error message Nibble would answer a report-sale body with, or None when valid."""
    if not isinstance(body, dict) or "sales" not in body:
        return "sales must be specified"
    sales = body["sales"]
    if not isinstance(sales, list) or not sales:
        return "sales must be a non-empty list"
    if len(sales) > MAX_SALES:
        return f"A maximum of {MAX_SALES} sales can be reported at a time"
    return _first_error(check_sale(sale) for sale in sales)


def check_sale(sale: Any) -> str | None:
    if not isinstance(sale, dict):
        return "each sale must be an object"
    required = ("purchase_date_time", "session_token", "order_number", "currency_code",
                "total_item_price")  # fmt: skip
    if error := _first_error(_required_string(sale, name) for name in required):
        return error
    if not ISO_DATETIME.fullmatch(sale["purchase_date_time"]):
        return "purchase_date_time must be an ISO 8601 date and time in UTC or with a time zone"
    if not CURRENCY.fullmatch(sale["currency_code"]):
        return "currency_code must be an ISO 4217 three-letter currency code"
    if not DECIMAL.fullmatch(sale["total_item_price"]):
        return "total_item_price must be a decimal number"
    if sale.get("nibble_id") is not None and not isinstance(sale["nibble_id"], str):
        return "nibble_id must be a string"
    items = sale.get("items")
    if items is None:
        return "items must be specified"
    if not isinstance(items, list) or not items:
        return "items must be a non-empty list"
    return _first_error(check_item(item) for item in items)


def check_item(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "each item must be an object"
    if error := _required_string(item, "product_id"):
        return error
    if item.get("variant_id") is not None and not isinstance(item["variant_id"], str):
        return "variant_id must be a string"
    quantity = item.get("quantity", 1)
    if not _is_int(quantity) or quantity < 1:
        return "quantity must be a positive integer"
    if item.get("nibble_id") is not None and not isinstance(item["nibble_id"], str):
        return "nibble_id must be a string"
    if "isNibbleAddonItem" in item and not isinstance(item["isNibbleAddonItem"], bool):
        return "isNibbleAddonItem must be a boolean"
    if item.get("isNibbleAddonItem") is True and not item.get("nibble_id"):
        return "nibble_id must be specified for an addon item"
    return None


def new_session(body: Any) -> dict[str, Any] | str:
    """A create-session body → the session the sandbox keeps, or the error message."""
    if not isinstance(body, dict):
        return "Request body must be a JSON object"
    if _required_string(body, "session_token"):
        return "sessionToken must be specified"
    negotiation = body.get("negotiation_type", "product")
    if negotiation not in ("product", "cart"):
        return "negotiationType must be product or cart"
    currency = body.get("currency_code", "GBP")
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        return "currencyCode must be an ISO 4217 currency code"
    price = body.get("original_price", body.get("product_price"))
    if price is None:
        return "originalPrice must be specified"
    if not DECIMAL.fullmatch(str(price)) or isinstance(price, bool):
        return "originalPrice must be a decimal number"
    threshold = body.get("threshold_price")
    if threshold is not None and (
        isinstance(threshold, bool) or not DECIMAL.fullmatch(str(threshold))
    ):
        return "thresholdPrice must be a decimal number"
    session: dict[str, Any] = {
        "nibbleId": secrets.token_hex(4).upper(),
        "sessionStatus": "open",
        "negotiationType": negotiation,
        "currencyCode": currency,
        "retailerSessionId": body["session_token"],
        "originalPrice": str(price),
    }
    if threshold is not None:
        session["thresholdPrice"] = str(threshold)
    if negotiation == "product":
        if _required_string(body, "product_id"):
            return "productId must be specified"
        if _required_string(body, "product_name"):
            return "productName must be specified"
        quantity = body.get("quantity", 1)
        maximum = body.get("max_quantity", body.get("maxQuantity", 10))
        if not _is_int(quantity) or quantity < 1:
            return "quantity must be a positive integer"
        if not _is_int(maximum) or maximum < quantity:
            return "maxQuantity must be an integer not below quantity"
        session.update(
            productId=body["product_id"],
            productName=body["product_name"],
            quantity=quantity,
            maxQuantity=maximum,
        )
        for source, target in (("variant_id", "variantId"), ("variant_name", "variantName")):
            if body.get(source) is not None:
                session[target] = str(body[source])
    return session


def session_view(session: dict[str, Any]) -> dict[str, Any]:
    """Get-session body: negotiatedPrice and quantity only for successful sessions."""
    view = {
        k: v
        for k, v in session.items()
        if k
        in (
            "nibbleId",
            "sessionStatus",
            "productId",
            "variantId",
            "retailerSessionId",
            "nextAction",
        )
    }
    if "variantId" in view:
        view["subProductId"] = view["variantId"]
    if session["sessionStatus"] == "successful":
        view["negotiatedPrice"] = session["negotiatedPrice"]
        view["quantity"] = session["negotiatedQuantity"]
        view["additionalProducts"] = session.get("additionalProducts", [])
    view["payload"] = f"sandbox-signed.{session['nibbleId']}"
    return view


def _first_error(errors: Iterable[str | None]) -> str | None:
    """The first error, checking lazily: Nibble answers with one message."""
    return next((error for error in errors if error), None)


def _required_string(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return f"{name} must be specified"
    if not isinstance(value, str):
        return f"{name} must be a string"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"errorMessage": message}, status)


class NibbleApi:
    def __init__(self, settings: SandboxSettings, state: SandboxState) -> None:
        self._settings = settings
        self._book = state.book("nibble")
        self.sessions: dict[str, dict[str, Any]] = {}

    def routes(self) -> list[Route]:
        return [
            Route("/v1/sales", self.report_sales, methods=["POST"]),
            Route("/v1/session", self.create_session, methods=["POST"]),
            Route("/v1/session/", self.get_session, methods=["GET"]),
            Route("/v1/session/{nibble_id}", self.get_session, methods=["GET"]),
        ]

    def _auth_error(self, request: Request) -> Response | None:
        if request.headers.get("x-api-key") != self._settings.nibble_api_key:
            return _error("API Key is not valid.", 401)
        if request.headers.get("x-nibble-api-secret") != self._settings.nibble_api_secret:
            return _error("API Secret is not valid.", 401)
        return None

    async def _body(self, request: Request) -> Any:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ValueError("Content-Type must be application/json")
        try:
            return await request.json()
        except ValueError as exc:
            raise ValueError("Request body must be valid JSON") from exc

    async def report_sales(self, request: Request) -> Response:
        book = self._book
        if (failure := await book.injected_failure(request, _unauthorized)) is not None:
            return failure
        if (denied := self._auth_error(request)) is not None:
            return book.rejected(denied)
        try:
            body = await self._body(request)
        except ValueError as exc:
            return book.rejected(_error(str(exc)))
        if (message := check_sales(body)) is not None:
            return book.rejected(_error(message))
        keys = [sale["order_number"] for sale in body["sales"]]
        await book.hold(keys)
        if rejected := book.rejected_keys(keys):
            return book.rejected(_error(f"order_number {keys[rejected[0]]} was rejected"))
        book.accept(
            request, len(keys), [Accepted(k, s) for k, s in zip(keys, body["sales"], strict=True)]
        )
        return JSONResponse({"success": True})

    async def create_session(self, request: Request) -> Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        try:
            session = new_session(await self._body(request))
        except ValueError as exc:
            return _error(str(exc))
        if isinstance(session, str):
            return _error(session)
        self.sessions[session["nibbleId"]] = session
        return JSONResponse(session)

    async def get_session(self, request: Request) -> Response:
        if (denied := self._auth_error(request)) is not None:
            return denied
        nibble_id = request.path_params.get("nibble_id", "")
        if not nibble_id:
            return _error("sessionId must be specified")
        if not NIBBLE_ID.fullmatch(nibble_id):
            return _error("sessionId is not valid")
        session = self.sessions.get(nibble_id)
        if session is None:
            return _error("Session not found", 404)
        return JSONResponse(session_view(session))

    def finish(self, nibble_id: str, outcome: dict[str, Any]) -> dict[str, Any] | None:
        """What the widget would do: end the negotiation, successfully or not."""
        session = self.sessions.get(nibble_id)
        if session is None:
            return None
        status = outcome.get("status", "successful")
        if status not in ("successful", "failed"):
            raise ValueError("status must be successful or failed")
        session["sessionStatus"] = status
        session["nextAction"] = outcome.get("next_action", "checkout")
        if status == "successful":
            quantity = outcome.get("quantity", session.get("quantity", 1))
            session["negotiatedQuantity"] = quantity
            session["negotiatedPrice"] = str(
                outcome.get("negotiated_price", session["originalPrice"])
            )
            session["additionalProducts"] = outcome.get("additional_products", [])
        return session_view(session)


def _unauthorized() -> Response:
    return _error("API Secret is not valid.", 401)
