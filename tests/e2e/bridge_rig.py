"""The bridge end to end: vmcd's machine rig, vmc-bridge in process, and a third party.

The third party is written from the seed's outbound document alone: it serves the callbacks
(``/txn/request``, ``/txn/unlock``, ``/txn/vend``, ``/feed/...``), keeps books for post billing
or reference payment, and calls the bridge's inbound API (``/api/paid``) with its API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge import run
from bridge.config import BridgeConfig, EventsMode, ThirdParty
from bridge.service import Bridge
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE

INBOUND_KEY = "acme-inbound-key"
OUTBOUND_KEY = "acme-outbound-key"
PATHS = (
    "/txn/request",
    "/txn/unlock",
    "/txn/vend",
    "/feed/transactions",
    "/feed/refills",
    "/feed/alerts",
    "/feed/button_actions",
)


class Policy(StrEnum):
    POST_BILLING = "post_billing"  # check the balance at the request, charge on the vend
    REFERENCE_PAYMENT = "reference_payment"  # charge at the request, refund if no vend


@dataclass
class ThirdPartyBooks:
    policy: Policy
    balances: dict[str, int]
    members: dict[str, str] = field(default_factory=dict)
    """txn_ref -> member, set when the third party locks."""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    charged: dict[str, int] = field(default_factory=dict)
    paid_answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    refuse_next: int = 0
    """Answer this many callbacks 503 first (a third party that is down)."""
    refused: int = 0
    keys: set[str] = field(default_factory=set)
    """Idempotency-Key headers seen: a callback booked once however often it comes."""
    duplicates: int = 0

    def paths(self) -> list[str]:
        return [path for path, _ in self.calls]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.calls if p == path]


class FakeThirdParty:
    """The integrator's server, built from the outbound document, and its client of the bridge."""

    def __init__(self, books: ThirdPartyBooks, bridge_url: str) -> None:
        self.books = books
        self.bridge_url = bridge_url
        self.app = Starlette(routes=[Route(p, self.handle, methods=["POST"]) for p in PATHS])
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, request: Request) -> JSONResponse:
        if request.headers.get("x-api-key") != OUTBOUND_KEY:
            return JSONResponse({"success": False, "message": "who?"}, status_code=401)
        if self.books.refuse_next > 0:
            self.books.refuse_next -= 1
            self.books.refused += 1
            return JSONResponse({"success": False, "message": "down"}, status_code=503)
        body = await request.json()
        key = request.headers["idempotency-key"]
        if key in self.books.keys:
            self.books.duplicates += 1
            return JSONResponse({"success": True, "message": "seen before"})
        self.books.keys.add(key)
        self.books.calls.append((request.url.path, body))
        return JSONResponse(self.answer(request.url.path, body))

    def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        books = self.books
        ref = str(body.get("txn_ref"))
        member = books.members.get(ref, "")
        if path == "/txn/request":
            cents = int(body["cents"])
            if books.policy is Policy.POST_BILLING and books.balances.get(member, 0) < cents:
                return {"success": False, "message": "insufficient balance"}
            if books.policy is Policy.REFERENCE_PAYMENT:
                books.charged[ref] = cents
            self._later(self.pay(ref, cents))
        elif path == "/txn/vend":
            if body["success"] and books.policy is Policy.POST_BILLING:
                price = books.charged.setdefault(ref, self._price(ref))
                books.balances[member] -= price
            elif not body["success"] and books.policy is Policy.REFERENCE_PAYMENT:
                books.charged[ref] = 0  # refunded
        elif path == "/txn/unlock" and books.policy is Policy.REFERENCE_PAYMENT:
            books.charged[ref] = 0
        return {"success": True, "message": ""}

    def _price(self, ref: str) -> int:
        return next(
            int(b["cents"]) for b in self.books.bodies("/txn/request") if b["txn_ref"] == ref
        )

    def _later(self, work: Awaitable[None]) -> None:
        async def go() -> None:
            await work

        task = asyncio.get_running_loop().create_task(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.bridge_url) as http:
            response = await http.post(
                path, json=body, headers={"X-API-Key": INBOUND_KEY}, timeout=15
            )
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def pay(self, ref: str, cents: int) -> None:
        answer = await self.call(
            "/api/paid", {"txnRef": ref, "price": cents, "discount": 0, "surcharge": 0}
        )
        self.books.paid_answers[ref] = answer

    async def lock(self, ref: str, member: str, balance: int | None = None) -> dict[str, Any]:
        self.books.members[ref] = member
        body: dict[str, Any] = {"vm_id": DEVICE, "txnRef": ref}
        if balance is not None:
            body["balance"] = balance
        return await self.call("/api/lock", body)


@dataclass
class BridgeRig:
    bridge: Bridge
    third_party: FakeThirdParty
    url: str

    @property
    def books(self) -> ThirdPartyBooks:
        return self.third_party.books


async def eventually(probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Until ``probe()`` is truthy (polled every 50 ms); its value."""
    async with asyncio.timeout(timeout):
        while not (value := probe()):
            await asyncio.sleep(0.05)
        return value


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[str]:
    sock = run.listening("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = run.server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: server.started, 10)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        sock.close()


@contextlib.asynccontextmanager
async def bridged(
    tmp_path: Path,
    broker: MosquittoBroker,
    *,
    policy: Policy = Policy.POST_BILLING,
    balances: dict[str, int] | None = None,
    lock_timeout: float = 60.0,
    books: ThirdPartyBooks | None = None,
    database: str | Path | None = None,
) -> AsyncIterator[BridgeRig]:
    """vmc-bridge between the broker and a third party (its callbacks' server running);
    ``books``: the third party's from an earlier run (it keeps them across a bridge restart);
    ``database``: the bridge's (default a SQLite file in ``tmp_path``)."""
    books = books or ThirdPartyBooks(policy, dict(balances or {"alice": 10_000}))
    placeholder = FakeThirdParty(books, "")
    async with serving(placeholder.app) as third_party_url:
        config = BridgeConfig(
            mqtt_host="127.0.0.1",
            mqtt_port=broker.port,
            database=database or tmp_path / "bridge.sqlite3",
            third_parties=(
                ThirdParty(
                    "acme",
                    third_party_url,
                    frozenset({DEVICE}),
                    (INBOUND_KEY,),
                    outbound_api_key=OUTBOUND_KEY,
                ),
            ),
            lock_timeout=lock_timeout,
        )
        async with run.started(config) as (bridge, app), serving(app) as url:
            placeholder.bridge_url = url
            await asyncio.wait_for(bridge.link.connected.wait(), 10)
            await eventually(lambda: (v := bridge.fleet.view(DEVICE)) is not None and v.online)
            yield BridgeRig(bridge, placeholder, url)


BRIDGE = str(Path(sys.executable).parent / "vmc-bridge")


def bridge_config(
    path: Path,
    mqtt_url: str,
    port: int,
    third_party_url: str,
    *,
    client_id: str = "vmc-bridge",
    database: str = "sqlite:///state/bridge.sqlite3",
    events: EventsMode = EventsMode.ALL,
    member_lease: float = 15.0,
) -> Path:
    """A vmc-bridge TOML file for the third party ``acme`` (the keys of this module, and a
    basic user ``ops``/``hunter22``)."""
    path.write_text(
        f'[bridge]\nmqtt = "{mqtt_url}"\nlisten = "127.0.0.1:{port}"\n'
        f'database = "{database}"\nclient_id = "{client_id}"\n'
        f'events = "{events}"\nmember_lease = {member_lease}\n\n'
        f'[[third_party]]\nname = "acme"\nbase_url = "{third_party_url}"\n'
        f'api_keys = ["{INBOUND_KEY}"]\nusers = {{ ops = "hunter22" }}\n'
        f'outbound_api_key = "{OUTBOUND_KEY}"\n'
    )
    return path


@dataclass
class BridgeProcess:
    """``vmc-bridge`` run as a process, its output in ``log``."""

    config: Path
    log: Path
    port: int
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                BRIDGE, "--config", str(self.config), stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        async with httpx.AsyncClient(base_url=self.url) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/openapi.json")).status_code == 200
                except httpx.HTTPError:
                    return False

            async with asyncio.timeout(15):
                while not await up():
                    await asyncio.sleep(0.1)
        await eventually(lambda: "mqtt_connected" in self.log.read_text(), 10)

    def kill(self) -> None:
        """kill -9: no clean stop of anything."""
        assert self.proc is not None
        self.proc.kill()

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode
