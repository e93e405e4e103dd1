"""The bridge's inbound HTTP API without a broker: auth, bodies, searches, the served OpenAPI."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bridge.api import create_app
from bridge.config import BridgeConfig, ThirdParty
from bridge.service import Bridge
from bridge.store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seeds" / "vot-openapi" / "inbound_api.yaml"
KEY = {"X-API-Key": "key-acme"}


def config(tmp_path: Path) -> BridgeConfig:
    return BridgeConfig(
        mqtt_host="127.0.0.1",
        mqtt_port=1,
        database=tmp_path / "bridge.sqlite3",
        third_parties=(
            ThirdParty("acme", "http://127.0.0.1:9", frozenset({"m1", "m2"}), ("key-acme",)),
            ThirdParty("zeta", "http://127.0.0.1:9", None, (), (("zed", "s3cret"),)),
        ),
        reply_timeout=0.3,
    )


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    store = SqliteStore(tmp_path / "bridge.sqlite3")
    await store.open()
    yield Bridge(config(tmp_path), store)
    await store.close()


@pytest.fixture
async def client(bridge: Bridge) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(bridge))
    async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as http:
        yield http


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-API-Key": "key-wrong"},
        {"Authorization": "Basic " + base64.b64encode(b"zed:wrong").decode()},
        {"Authorization": "Basic !!"},
    ],
)
async def test_bridge_api_wrong_credentials_get_401(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    response = await client.post("/api/vmc_search", json={"vm_id": "m1"}, headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["success"] is False
    assert body["message"].startswith("unauthorized")


async def test_bridge_api_basic_auth_and_machines_by_owner(
    client: httpx.AsyncClient, bridge: Bridge
) -> None:
    bridge.fleet.update("m1", "status", {"v": 1, "state": "online"})
    bridge.fleet.update("m1", "state", {"v": 1, "reader": "enabled", "txn": None, "mdb_link": "up"})
    bridge.fleet.update("m3", "status", {"v": 1, "state": "lost"})
    zed = ("zed", "s3cret")
    found = (await client.post("/api/vmc_search", json={"vm_id": "m3"}, auth=zed)).json()
    assert found["success"] is True
    assert found["vendingMachine"]["online"] is False
    # acme owns m1 and m2 only; m2 was never heard of.
    bulk = await client.post("/api/vmc_bulk_search", json={"vms": ["m1", "m2", "m3"]}, headers=KEY)
    body = bulk.json()
    assert body["success"] is True
    assert body["message"] == "unknown vending machines: m2, m3"
    assert body["vendingMachines"] == [
        {
            "id": "m1",
            "online": True,
            "busy": False,
            "keypad_configuration": {"virtual_keypad_enabled": False},
        }
    ]
    hidden = (await client.post("/api/vmc_search", json={"vm_id": "m3"}, headers=KEY)).json()
    assert hidden == {"success": False, "message": "unknown vending machine 'm3'"}


async def test_bridge_api_unreadable_bodies_get_400(client: httpx.AsyncClient) -> None:
    for body in ([1], {"balance": "12", "vm_id": "m1", "txnRef": "r"}, {"vm_id": 5}):
        response = await client.post("/api/lock", json=body, headers=KEY)
        assert response.status_code == 400, body
        assert response.json()["success"] is False
    garbage = await client.post("/api/lock", content=b"{nope", headers=KEY)
    assert garbage.status_code == 400


async def test_bridge_api_lock_paid_unlock_refusals(
    client: httpx.AsyncClient, bridge: Bridge
) -> None:
    async def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post(path, json=body, headers=KEY)
        assert response.status_code == 200
        answer: dict[str, Any] = response.json()
        return answer

    assert (await call("/api/lock", {"vm_id": "m1"}))["message"] == (
        "vm_id (or id) and txnRef are required"
    )
    unknown = await call("/api/lock", {"id": "m1", "txnRef": "R1"})
    assert unknown == {"success": False, "message": "unknown vending machine 'm1'"}
    bridge.fleet.update("m1", "status", {"v": 1, "state": "offline"})
    offline = await call("/api/lock", {"id": "m1", "txnRef": "R1"})
    assert offline["message"] == "the vending machine is offline"
    bridge.fleet.update("m1", "status", {"v": 1, "state": "online"})
    silent = await call("/api/lock", {"vm_id": "m1", "txnRef": "R1", "balance": 65535})
    assert silent == {"success": False, "message": "the vending machine did not answer"}
    assert (await call("/api/paid", {"txnRef": "R1", "price": 5}))["message"] == (
        "no selection yet: wait for /txn/request"
    )
    assert (await call("/api/paid", {"txnRef": "R9", "price": 5}))["success"] is False
    assert (await call("/api/paid", {"txnRef": "R1"}))["message"] == "txnRef and price are required"
    assert (await call("/api/unlock", {"txnRef": "R1"}))["message"] == "the lock was not taken"
    keys = await call("/api/vmc_user_keys", {"vm_id": "m1", "keys": [1, 2], "txnRef": "R1"})
    assert keys["success"] is False
    assert "not supported" in keys["message"]


# --- the served OpenAPI against the seed's inbound document ---------------------------------


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def shape(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A schema reduced to what both documents must agree on: types, formats, properties."""
    schema = _resolve(doc, schema)
    if "anyOf" in schema:  # pydantic's optional: the one non-null branch
        (schema,) = [s for s in schema["anyOf"] if s.get("type") != "null"]
        schema = _resolve(doc, schema)
    properties: dict[str, Any] = {}
    for part in schema.get("allOf", []):
        properties |= shape(doc, part)["properties"]
    for name, sub in schema.get("properties", {}).items():
        properties[name] = shape(doc, sub)
    if properties or schema.get("type") == "object" or "allOf" in schema:
        return {"type": "object", "properties": properties}
    out = {"type": schema.get("type"), "format": schema.get("format")}
    if schema.get("type") == "array":
        out["items"] = shape(doc, schema["items"])
    return out


def operations(doc: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            request = op["requestBody"]["content"]["application/json"]["schema"]
            response = op["responses"].get("200", op["responses"].get(200))
            answer = response["content"]["application/json"]["schema"]
            found[f"{method} {path}"] = (shape(doc, request), shape(doc, answer))
    return found


@pytest.mark.skipif(not SEED.exists(), reason=f"the seed's inbound document is absent at {SEED}")
async def test_bridge_openapi_matches_the_seed_inbound_document(client: httpx.AsyncClient) -> None:
    seed = yaml.safe_load(SEED.read_text())
    served = (await client.get("/openapi.json")).json()
    assert operations(served) == operations(seed)
    schemes = served["components"]["securitySchemes"]
    assert schemes["ApiKeyAuth"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BasicAuth"] == {"type": "http", "scheme": "basic"}
    assert served["info"]["version"] == seed["info"]["version"]
