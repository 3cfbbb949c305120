"""The sandbox's ASGI app: the three vendors and the registry under their prefixes, and the
`/_sandbox` control API that tests, the demo and the benchmark use to inspect and inject faults.

    GET    /_sandbox/health
    POST   /_sandbox/reset                       forget records, counters and faults
    GET    /_sandbox/stats                       per vendor: requests, items, duplicates, ...
    GET    /_sandbox/records/{vendor}            accepted orders, one per key per request
    GET    /_sandbox/state/{vendor}              what the vendor holds per order (`holdings`)
    GET    /_sandbox/request-sizes/{vendor}      items per accepted request
    GET    /_sandbox/faults                      current faults
    PUT    /_sandbox/faults/{vendor}             replace a vendor's faults (JSON object)
    DELETE /_sandbox/faults                      clear all faults
    POST   /_sandbox/nibble/sessions/{id}/finish end a negotiation as the widget would
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from consumer.sandbox.custobar import CustobarApi
from consumer.sandbox.holdings import HOLDING_VENDORS, held
from consumer.sandbox.nibble import NibbleApi
from consumer.sandbox.nudgify import NudgifyApi
from consumer.sandbox.registry import RegistryApi
from consumer.sandbox.settings import SandboxSettings
from consumer.sandbox.state import VENDORS, Faults, SandboxState


def build_app(settings: SandboxSettings) -> Starlette:
    state = SandboxState(settings.record_dir, settings.seed)
    nibble = NibbleApi(settings, state)

    def vendor_of(request: Request) -> str | None:
        vendor = request.path_params["vendor"]
        return vendor if vendor in VENDORS else None

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"status": "reset"})

    async def stats(request: Request) -> Response:
        return JSONResponse({v: state.book(v).stats() for v in VENDORS if v != "registry"})

    async def records(request: Request) -> Response:
        if (vendor := vendor_of(request)) is None:
            return _unknown_vendor()
        return JSONResponse(state.book(vendor).records)

    async def holdings(request: Request) -> Response:
        vendor = request.path_params["vendor"]
        if vendor not in HOLDING_VENDORS:
            return JSONResponse(
                {"error": f"vendor must be one of {', '.join(HOLDING_VENDORS)}"}, 404
            )
        return JSONResponse(held(vendor, state.book(vendor).records))

    async def request_sizes(request: Request) -> Response:
        if (vendor := vendor_of(request)) is None:
            return _unknown_vendor()
        return JSONResponse(state.book(vendor).request_sizes)

    async def faults(request: Request) -> Response:
        return JSONResponse(state.faults())

    async def set_faults(request: Request) -> Response:
        if (vendor := vendor_of(request)) is None:
            return _unknown_vendor()
        try:
            body: Any = await request.json()
            state.book(vendor).faults = Faults.parse(body if isinstance(body, dict) else {})
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        return JSONResponse(state.faults()[vendor])

    async def clear_faults(request: Request) -> Response:
        for book in state.books.values():
            book.faults = Faults()
        return JSONResponse(state.faults())

    async def finish_session(request: Request) -> Response:
        try:
            body: Any = await request.json() if await request.body() else {}
            view = nibble.finish(request.path_params["nibble_id"], body)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        if view is None:
            return JSONResponse({"error": "no such session"}, 404)
        return JSONResponse(view)

    async def gateway_miss(request: Request) -> Response:
        return JSONResponse({"message": "Missing Authentication Token"}, 403)

    control = [
        Route("/health", health),
        Route("/reset", reset, methods=["POST"]),
        Route("/stats", stats),
        Route("/records/{vendor}", records),
        Route("/state/{vendor}", holdings),
        Route("/request-sizes/{vendor}", request_sizes),
        Route("/faults", faults),
        Route("/faults", clear_faults, methods=["DELETE"]),
        Route("/faults/{vendor}", set_faults, methods=["PUT"]),
        Route("/nibble/sessions/{nibble_id}/finish", finish_session, methods=["POST"]),
    ]
    nibble_routes = [*nibble.routes(), Route("/{path:path}", gateway_miss, methods=["GET", "POST"])]
    return Starlette(
        routes=[
            Mount("/_sandbox", routes=control),
            Mount("/nibble", routes=nibble_routes),
            Mount("/nudgify", routes=NudgifyApi(settings, state).routes()),
            Mount("/custobar", routes=CustobarApi(settings, state).routes()),
            Mount("/registry", routes=RegistryApi(state).routes()),
        ]
    )


def _unknown_vendor() -> JSONResponse:
    return JSONResponse({"error": f"vendor must be one of {', '.join(VENDORS)}"}, 404)
