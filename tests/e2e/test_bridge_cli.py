"""vmc-bridge as a process: it serves, keeps secrets out of its log, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import httpx

from sim.broker import MosquittoBroker, free_port
from tests.e2e.bridge_rig import eventually

BRIDGE = str(Path(sys.executable).parent / "vmc-bridge")


def write_config(tmp_path: Path, broker: MosquittoBroker, port: int) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(
        f'[bridge]\nmqtt = "{broker.url}"\nlisten = "127.0.0.1:{port}"\n'
        'database = "sqlite:///state/bridge.sqlite3"\n\n'
        '[[third_party]]\nname = "acme"\nbase_url = "http://127.0.0.1:9"\n'
        'api_keys = ["very-secret-key"]\nusers = { ops = "hunter22" }\n'
        'outbound_api_key = "outbound-secret"\n'
    )
    return path


async def test_bridge_process_serves_and_stops_on_sigterm(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    port = free_port()
    config = write_config(tmp_path, broker, port)
    log = tmp_path / "bridge.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            BRIDGE, "--config", str(config), stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:

            async def up() -> bool:
                try:
                    return (await http.get("/openapi.json")).status_code == 200
                except httpx.HTTPError:
                    return False

            async with asyncio.timeout(15):
                while not await up():
                    await asyncio.sleep(0.1)
            wrong = await http.post("/api/vmc_search", json={}, headers={"X-API-Key": "nope"})
            assert wrong.status_code == 401
            right = await http.post(
                "/api/vmc_search", json={"vm_id": "m9"}, auth=("ops", "hunter22")
            )
            assert right.json() == {"success": False, "message": "unknown vending machine 'm9'"}
        await eventually(lambda: "mqtt_connected" in log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = log.read_text()
    for secret in ("very-secret-key", "hunter22", "outbound-secret", "nope"):
        assert secret not in text
    assert (tmp_path / "state" / "bridge.sqlite3").exists()


async def test_bridge_process_port_taken_is_one_line(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    port = free_port()
    config = write_config(tmp_path, broker, port)
    with socket.create_server(("127.0.0.1", port)):
        proc = await asyncio.create_subprocess_exec(
            BRIDGE,
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 1
    lines = err.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"vmc-bridge: cannot listen on 127.0.0.1:{port}:")
