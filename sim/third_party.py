"""A Connectivity Platform third party: the app's server that vmc-bridge calls back.

It is what an integrator writes against the platform's two documents, and nothing of vmc: it
serves the outbound callbacks (``/txn/request``, ``/txn/unlock``, ``/txn/vend``, ``/feed/*``)
and calls the bridge's inbound API. It locks a machine for a member (``/api/lock``), answers a
``/txn/request`` by ``/api/paid`` (or refuses it with ``success: false``: the bridge then denies
the selection), and keeps books from the outcome: under post billing a member's balance is
checked at the request and charged on ``/txn/vend``; under reference payment the member's
stored payment is taken at the request and given back when nothing was dispensed.

A callback comes at least once: the third party books each ``Idempotency-Key`` once and
counts the duplicates it dropped. Needs the ``bridge`` extra (Starlette, httpx).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sim.backend import Policy

CALLBACKS = (
    "/txn/request",
    "/txn/unlock",
    "/txn/vend",
    "/feed/transactions",
    "/feed/refills",
    "/feed/alerts",
    "/feed/button_actions",
)
HTTP_TIMEOUT_S = 15.0
SERVER_START_S = 10.0


class BridgeCallError(Exception):
    """The bridge answered an inbound call with something other than 200."""


@dataclass
class Order:
    """One txnRef: the third party's book line for a member's purchase."""

    txn_ref: str
    member: str
    cents: int | None = None
    """The price of the selection, from /txn/request."""
    charged: int = 0
    paid: dict[str, Any] | None = None
    """The bridge's answer to /api/paid."""
    vended: bool | None = None
    """/txn/vend's ``success``; None before it."""
    unlocked: str | None = None
    """/txn/unlock's ``code``; None before it."""

    @property
    def outcome(self) -> str | None:
        """How it ended, from its callbacks; None while it is open."""
        if self.vended is not None:
            return "vended" if self.vended else "vend failed"
        if self.unlocked is not None:
            return f"unlocked ({self.unlocked})"
        return None


@dataclass
class AppBooks:
    """What the third party knows: its orders, its members' balances, every callback once."""

    policy: Policy
    balances: dict[str, int]
    orders: dict[str, Order] = field(default_factory=dict)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    duplicates: int = 0

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.calls if p == path]

    def charged(self) -> int:
        return sum(order.charged for order in self.orders.values())

    def open(self, txn_ref: str, member: str) -> Order:
        """A new order: the member is about to lock a machine with ``txn_ref``."""
        order = self.orders[txn_ref] = Order(txn_ref, member)
        return order

    def request(self, order: Order, cents: int) -> str | None:
        """A selection of ``cents``: None to approve it, else why it is refused."""
        order.cents = cents
        balance = self.balances.get(order.member, 0)
        if self.policy is Policy.DENY_ALL:
            return "denied by policy"
        if balance < cents:
            return "insufficient balance"
        if self.policy is Policy.REFERENCE_PAYMENT:
            self._charge(order, cents)  # the stored payment is taken now
        return None

    def vend(self, order: Order, success: bool) -> None:
        order.vended = success
        if success and self.policy is Policy.POST_BILLING and order.cents is not None:
            self._charge(order, order.cents)
        elif not success:
            self._give_back(order)

    def unlock(self, order: Order, code: str) -> None:
        order.unlocked = code
        self._give_back(order)

    def _charge(self, order: Order, cents: int) -> None:
        order.charged += cents
        self.balances[order.member] = self.balances.get(order.member, 0) - cents

    def _give_back(self, order: Order) -> None:
        self.balances[order.member] = self.balances.get(order.member, 0) + order.charged
        order.charged = 0


class AppServer:
    """The third party: its callbacks' server (``app``) and its client of the bridge."""

    def __init__(
        self,
        books: AppBooks,
        http: httpx.AsyncClient,
        *,
        api_key: str,
        outbound_key: str,
    ) -> None:
        """``http``: a client whose base URL is the bridge's; ``api_key``: what the third party
        sends to the bridge; ``outbound_key``: what the bridge must send on its callbacks."""
        self.books = books
        self.http = http
        self.api_key = api_key
        self.outbound_key = outbound_key
        self.app = Starlette(routes=[Route(p, self._handle, methods=["POST"]) for p in CALLBACKS])
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One inbound call; the StandardResponse."""
        response = await self.http.post(
            path, json=body, headers={"X-API-Key": self.api_key}, timeout=HTTP_TIMEOUT_S
        )
        if response.status_code != 200:
            raise BridgeCallError(f"{path}: HTTP {response.status_code}: {response.text}")
        answer: dict[str, Any] = response.json()
        return answer

    async def lock(self, machine: str, txn_ref: str, member: str) -> dict[str, Any]:
        """Lock ``machine`` for ``member``; the bridge's answer (``success``, ``timeout``)."""
        self.books.open(txn_ref, member)
        balance = self.books.balances.get(member, 0)
        body = {"vm_id": machine, "txnRef": txn_ref, "balance": balance}
        return await self.call("/api/lock", body)

    async def online(self, machine: str) -> bool:
        """``/api/vmc_search``: whether the bridge knows the machine and sees it online."""
        answer = await self.call("/api/vmc_search", {"vm_id": machine})
        return bool(answer.get("success") and answer["vendingMachine"].get("online"))

    async def undelivered(self) -> list[dict[str, Any]]:
        """The callbacks the bridge has not delivered to this third party yet."""
        response = await self.http.get(
            "/bridge/undelivered", headers={"X-API-Key": self.api_key}, timeout=HTTP_TIMEOUT_S
        )
        if response.status_code != 200:
            raise BridgeCallError(f"/bridge/undelivered: HTTP {response.status_code}")
        rows: list[dict[str, Any]] = response.json()["undelivered"]
        return rows

    async def wait_for(self, probe: Callable[[], Any], timeout: float) -> Any:
        """Until ``probe()`` is truthy, re-judged on every callback; TimeoutError after
        ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not (value := probe()):
                self._changed.clear()
                await self._changed.wait()
            return value

    async def close(self) -> None:
        """Stop the /api/paid calls still under way."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, request: Request) -> JSONResponse:
        if request.headers.get("x-api-key") != self.outbound_key:
            return JSONResponse({"success": False, "message": "unknown caller"}, status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"success": False, "message": "not JSON"}, status_code=400)
        key = request.headers.get("idempotency-key")
        if key is not None and key in self.books.keys:
            self.books.duplicates += 1
            return JSONResponse({"success": True, "message": "booked before"})
        if key is not None:
            self.books.keys.add(key)
        path = request.url.path
        self.books.calls.append((path, body))
        answer = self._answer(path, body)
        self._changed.set()
        return JSONResponse(answer)

    def _answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        order = self.books.orders.get(str(body.get("txn_ref")))
        if path == "/txn/request":
            if order is None:
                return {"success": False, "message": "no such order"}  # e.g. select-first
            cents = body.get("cents")
            if type(cents) is not int:
                return {"success": False, "message": "no price"}
            refused = self.books.request(order, cents)
            if refused is not None:  # the bridge denies it; /txn/unlock brings the reason back
                return {"success": False, "message": refused}
            self._later(self._pay(order))
        elif path == "/txn/vend" and order is not None:
            self.books.vend(order, bool(body["success"]))
        elif path == "/txn/unlock" and order is not None:
            self.books.unlock(order, str(body.get("code")))
        return {"success": True, "message": ""}

    async def _pay(self, order: Order) -> None:
        """Approve the selection: after the callback's answer, as a real server would."""
        cents = order.cents or 0
        body = {"txnRef": order.txn_ref, "price": cents, "discount": 0, "surcharge": 0}
        try:
            order.paid = await self.call("/api/paid", body)
        except (httpx.HTTPError, BridgeCallError) as exc:
            order.paid = {"success": False, "message": str(exc)}
        self._changed.set()

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@contextlib.asynccontextmanager
async def serving(app: Starlette, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """``app`` served on a free port of ``host`` until the block ends; its base URL."""
    from bridge import run  # the same uvicorn set-up as the bridge: no signal handlers of its own

    sock = run.listening(host, 0)
    server = run.server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(SERVER_START_S):
            while not server.started:
                if task.done():
                    task.result()  # its failure, as it is
                await asyncio.sleep(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()
