"""The bridge put together: the store, the MQTT link, the courier and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette

from bridge.api import create_app
from bridge.config import BridgeConfig
from bridge.courier import Courier
from bridge.link import NO_DELAY
from bridge.service import Bridge
from bridge.store import open_store

HTTP_POOLS = 16
"""HTTP clients the callbacks are shared out among, by machine: httpcore looks through all of
a client's connections for each request, and one client with a connection per machine in
flight (100) spent a sixth of the bridge's CPU there (cProfile)."""


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
                asyncio.create_task(bridge.link.run(), name="bridge-link"),
                asyncio.create_task(bridge.courier.run(), name="bridge-courier"),
                asyncio.create_task(bridge.planograms.run(), name="bridge-planograms"),
            ]
            try:
                yield bridge, create_app(bridge)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await store.close()


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
    """Run until SIGTERM or SIGINT."""
    async with started(config) as (_bridge, app):
        http = server(app)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, setattr, http, "should_exit", True)
        await http.serve(sockets=[sock])
