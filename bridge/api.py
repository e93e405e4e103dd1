"""The inbound HTTP API, as the seed's inbound document has it (``/api/...``).

Every answer is the StandardResponse ``{success, message}`` (plus the call's own fields):
HTTP 200 for what the bridge could judge (``success`` says how it went), 400 for a body it
cannot read, 401 for missing or wrong credentials. Credentials are compared in constant time
and never logged.
"""

# No "from __future__ import annotations": FastAPI reads the handlers' annotations at runtime.

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBasicCredentials
from starlette.exceptions import HTTPException

from bridge import models as md
from bridge.config import ThirdParty
from bridge.fleet import MachineView
from bridge.mapping import keypad
from bridge.service import Answer, Bridge
from bridge.store import CoilLevel

log = structlog.get_logger("bridge.api")

API_VERSION = "2.3"
NO_KEYPAD = (
    "the virtual keypad is not supported: a vmc machine takes the selection on its own "
    "keypad (the contract has no remote selection)"
)

UNAUTHORIZED = "unauthorized: wrong or missing X-API-Key or basic auth"

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[dict[str, Any]]])

api_key = APIKeyHeader(name="X-API-Key", scheme_name="ApiKeyAuth", auto_error=False)
basic = HTTPBasic(scheme_name="BasicAuth", auto_error=False)


class UnauthorizedError(Exception):
    """No credentials, or none that a configured third party holds."""


def _same(given: str, wanted: str) -> bool:
    return hmac.compare_digest(given.encode(), wanted.encode())


def who(
    parties: tuple[ThirdParty, ...], key: str | None, user: HTTPBasicCredentials | None
) -> ThirdParty:
    """The third party these credentials belong to."""
    for party in parties:
        if key is not None and any(_same(key, k) for k in party.api_keys):
            return party
        if user is not None and any(
            _same(user.username, name) & _same(user.password, password)
            for name, password in party.users
        ):
            return party
    raise UnauthorizedError


def _body(answer: Answer, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"success": answer.success, "message": answer.message}
    if answer.timeout is not None:
        out["timeout"] = answer.timeout
    return out | more


def _machine(view: MachineView, coils: Sequence[CoilLevel]) -> md.VendingMachine:
    return md.VendingMachine(
        id=view.id,
        online=view.online,
        busy=view.busy,
        keypad_configuration=md.KeypadConfiguration(**keypad(coils)),
    )


def create_app(bridge: Bridge) -> FastAPI:
    app = FastAPI(
        title="vmc-bridge: the Connectivity Platform's inbound API for vmc machines",
        version=API_VERSION,
        separate_input_output_schemas=False,
    )
    parties = bridge.config.third_parties

    def caller(
        key: Annotated[str | None, Depends(api_key)],
        user: Annotated[HTTPBasicCredentials | None, Depends(basic)],
    ) -> ThirdParty:
        return who(parties, key, user)

    Caller = Annotated[ThirdParty, Depends(caller)]  # noqa: N806
    refusals: dict[int | str, dict[str, Any]] = {
        400: {"model": md.StandardResponse, "description": "a body that cannot be read"},
        401: {"model": md.StandardResponse, "description": "missing or wrong credentials"},
    }
    router = APIRouter(tags=["payment endpoint"], responses=refusals)

    def call(
        path: str, answer: type[md.StandardResponse], summary: str
    ) -> Callable[[Handler], Handler]:
        """One of the document's calls: POST, its answer without the fields left unset."""
        return router.post(
            path, response_model=answer, response_model_exclude_none=True, summary=summary
        )

    @app.exception_handler(UnauthorizedError)
    async def unauthorized(_request: Request, _exc: UnauthorizedError) -> JSONResponse:
        return JSONResponse(
            {"success": False, "message": UNAUTHORIZED},
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="vmc-bridge"'},
        )

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        """Starlette's own refusals (no such path, an unreadable basic header) in the
        standard body; the credentials' details are never echoed."""
        unauthorized = exc.status_code == 401
        message = UNAUTHORIZED if unauthorized else str(exc.detail)
        return JSONResponse(
            {"success": False, "message": message},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def unreadable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"bad request: {where or 'body'}: {first.get('msg', 'unreadable')}"
        return JSONResponse({"success": False, "message": message}, status_code=400)

    @call("/api/lock", md.LockResponse, "Lock a machine for one vend")
    async def lock(body: md.LockRequest, party: Caller) -> dict[str, Any]:
        machine = body.vm_id or body.id
        if not machine or not body.txnRef:
            return _body(Answer(False, "vm_id (or id) and txnRef are required"))
        return _body(await bridge.lock(party, machine, body.txnRef, body.balance))

    @call("/api/paid", md.TransactionPaidResponse, "Approve the selection")
    async def paid(body: md.TransactionPaidRequest, party: Caller) -> dict[str, Any]:
        if not body.txnRef or body.price is None:
            return _body(Answer(False, "txnRef and price are required"))
        if min(body.price, body.discount or 0, body.surcharge or 0) < 0:
            return _body(Answer(False, "price, discount and surcharge must not be negative"))
        answer = await bridge.paid(
            party, body.txnRef, body.price, body.discount or 0, body.surcharge or 0
        )
        return _body(answer)

    @call("/api/unlock", md.CancelResponse, "Cancel before payment")
    async def unlock(body: md.CancelRequest, party: Caller) -> dict[str, Any]:
        if not body.txnRef:
            return _body(Answer(False, "txnRef is required"))
        return _body(await bridge.unlock(party, body.vm_id or body.id, body.txnRef))

    @call("/api/vmc_bulk_search", md.BulkSearchResponse, "Several machines")
    async def bulk_search(body: md.BulkSearchRequest, party: Caller) -> dict[str, Any]:
        found, unknown = [], []
        for machine in body.vms or []:
            view = bridge.machine(party, machine)
            if view is None:
                unknown.append(machine)
            else:
                found.append(_machine(view, await bridge.store.coils(machine)))
        message = f"unknown vending machines: {', '.join(unknown)}" if unknown else ""
        return _body(Answer(True, message), vendingMachines=found)

    @call("/api/vmc_search", md.SearchResponse, "One machine")
    async def search(body: md.SearchRequest, party: Caller) -> dict[str, Any]:
        view = bridge.machine(party, body.vm_id or "")
        if view is None:
            return _body(Answer(False, f"unknown vending machine {body.vm_id!r}"))
        coils = await bridge.store.coils(view.id)
        return _body(Answer(True), vendingMachine=_machine(view, coils))

    @call("/api/vmc_user_keys", md.UserKeysResponse, "Virtual keypad")
    async def user_keys(body: md.UserKeysRequest, party: Caller) -> dict[str, Any]:
        del body, party
        return _body(Answer(False, NO_KEYPAD))

    app.include_router(router)

    @app.get("/bridge/undelivered", include_in_schema=False)
    async def undelivered(party: Caller) -> dict[str, Any]:
        """This third party's callbacks not delivered yet (waiting or given up)."""
        rows = [d for d in await bridge.store.undelivered() if d.third_party == party.name]
        return {
            "success": True,
            "message": "",
            "undelivered": [
                {
                    "machine": d.machine,
                    "event_id": d.event_id,
                    "path": d.path,
                    "attempts": d.attempts,
                    "last_error": d.last_error,
                    "given_up": d.failed_at is not None,
                    "body": d.body,
                }
                for d in rows
            ],
        }

    app.openapi = lambda: _without_422(app)  # type: ignore[method-assign]
    return app


def _without_422(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, less the 422 it lists for every call: a body that cannot be read
    is answered 400 with the standard body here."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            routes=app.routes,
            separate_input_output_schemas=False,
        )
        for methods in document["paths"].values():
            for operation in methods.values():
                operation["responses"].pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = document
    return app.openapi_schema
