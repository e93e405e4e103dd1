"""Property-based calls of the bridge's served OpenAPI (schemathesis): no 500s, and every
answer is what the document says (status codes, bodies, content types).

The bridge runs in a thread of its own (uvicorn on a free port, a SQLite file, no broker:
the machines it is asked about are unknown or silent), and schemathesis calls it over HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis import Case
from schemathesis.core.result import Ok

from bridge import run
from bridge.api import create_app
from bridge.config import BridgeConfig, ThirdParty
from bridge.service import Bridge
from bridge.store import SqliteStore

KEY = {"X-API-Key": "key-acme"}


def config(database: Path) -> BridgeConfig:
    return BridgeConfig(
        mqtt_host="127.0.0.1",
        mqtt_port=1,  # nothing listens: every machine is unknown to the bridge
        database=database,
        third_parties=(ThirdParty("acme", "http://127.0.0.1:9", None, ("key-acme",)),),
        reply_timeout=0.2,
    )


# The document as the bridge serves it (made without opening anything).
schema = schemathesis.openapi.from_dict(
    create_app(Bridge(config(Path("unused")), SqliteStore(Path("unused")))).openapi()
)


@pytest.fixture(scope="module")
def bridge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    sock = run.listening("127.0.0.1", 0)
    ready = threading.Event()
    stop: list[Any] = []

    async def serve() -> None:
        database = tmp_path_factory.mktemp("bridge") / "bridge.sqlite3"
        async with run.started(config(database)) as (_bridge, app):
            server = run.server(app)
            stop.append(server)
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            ready.set()
            await task

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(15), "the bridge did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop[0].should_exit = True
    thread.join(15)
    sock.close()


@schema.parametrize()
def test_bridge_served_api_holds_to_its_document(case: Case[Any], bridge_url: str) -> None:
    case.call_and_validate(base_url=bridge_url, headers=KEY)


def test_bridge_schemathesis_saw_every_call() -> None:
    results = list(schema.get_all_operations())
    paths = {r.ok().path for r in results if isinstance(r, Ok)}
    assert len(paths) == len(results)
    assert paths == {
        "/api/lock",
        "/api/paid",
        "/api/unlock",
        "/api/vmc_search",
        "/api/vmc_bulk_search",
        "/api/vmc_user_keys",
    }
