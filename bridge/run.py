"""The bridge put together: the store, the MQTT link, the courier and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import structlog
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette

from bridge.adopt import Members
from bridge.api import create_app
from bridge.config import BridgeConfig, EventsMode
from bridge.courier import Courier
from bridge.link import NO_DELAY
from bridge.service import Bridge
from bridge.store import open_store

HTTP_POOLS = 16
"""HTTP clients the callbacks are shared out among, by machine: httpcore looks through all of
a client's connections for each request, and one client with a connection per machine in
flight (100) spent a sixth of the bridge's CPU there (cProfile)."""

CANCEL_AGAIN_S = 0.5
STOP_BUDGET_S = 5.0
"""From SIGTERM to the end of the process at most, whatever a library does with a cancel."""

log = structlog.get_logger("bridge.run")


@contextlib.asynccontextmanager
async def started(config: BridgeConfig) -> AsyncIterator[tuple[Bridge, FastAPI]]:
    """The bridge with its link and courier running, and its ASGI app (not yet served)."""
    store = open_store(config.database)
    await store.open()
    bridge = Bridge(config, store)
    try:
        async with contextlib.AsyncExitStack() as clients:
            # No Nagle on the callbacks: h11 writes a request's head and body apart, and
            # the body would wait for the head's (delayed) ACK. One TLS context for all
            # (each loads the CA bundle: 65 ms).
            tls = httpx.create_ssl_context()
            http = [
                await clients.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.AsyncHTTPTransport(verify=tls, socket_options=[NO_DELAY])
                    )
                )
                for _ in range(HTTP_POOLS)
            ]
            bridge.courier = Courier(config, store, bridge.on_answer, http)
            tasks = [
                asyncio.create_task(bridge.courier.run(), name="bridge-courier"),
                asyncio.create_task(bridge.planograms.run(), name="bridge-planograms"),
            ]
            if config.events is EventsMode.SHARED:
                members = Members(config, store, bridge.on_events)
                bridge.link.gate = members.own
                tasks.append(asyncio.create_task(members.run(), name="bridge-members"))
            tasks.append(asyncio.create_task(bridge.link.run(), name="bridge-link"))
            try:
                yield bridge, create_app(bridge)
            finally:
                bridge.link.closing = True
                await cancelled(tasks)
    finally:
        await store.close()


async def cancelled(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait until each has ended, cancelling again any that goes on.

    A cancellation can be lost inside a library: on Python 3.11, ``asyncio.wait_for`` drops
    one that arrives as its awaitable completes, and aiomqtt waits with it. The link's loop
    then reconnected for ever and a SIGTERM never ended the bridge (seen 1 stop in 4 with the
    broker down).
    """
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=CANCEL_AGAIN_S)
    await asyncio.gather(*tasks, return_exceptions=True)  # their errors are retrieved


class Server(uvicorn.Server):
    """uvicorn without its own signal handling: the caller decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(app: Starlette) -> Server:
    return Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))


def listening(host: str, port: int) -> socket.socket:
    """The HTTP socket, bound now so a taken port is a clear mistake (OSError).

    Made with the TCP protocol number, not 0: asyncio turns Nagle off (TCP_NODELAY) only on
    connections whose socket says TCP, and with Nagle on, an answer's body waited for the
    client's delayed ACK of its head: 40 ms on every call (measured)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    return sock


async def serve(config: BridgeConfig, sock: socket.socket) -> None:
    """Run until SIGTERM or SIGINT; the stop takes :data:`STOP_BUDGET_S` at most."""
    async with started(config) as (_bridge, app):
        http = server(app)
        loop = asyncio.get_running_loop()

        def stop() -> None:
            if not http.should_exit:
                http.should_exit = True
                loop.call_later(STOP_BUDGET_S, _cut_short)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop)
        await http.serve(sockets=[sock])


def _cut_short() -> None:
    """A stop that did not end in time: say what still ran, then end the process anyway.

    Nothing is lost by it: what was committed is in the database (or the system's cache of
    it: this is no power cut), an event is acknowledged to the broker only after its commit,
    and a callback's claim lapses for the next start.
    """
    running = [
        f"{task.get_name()} at {frames[-1].f_code.co_name}"
        if (frames := task.get_stack())
        else task.get_name()
        for task in asyncio.all_tasks()
    ]
    log.warning("bridge_stop_cut_short", budget_s=STOP_BUDGET_S, tasks=sorted(running))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
