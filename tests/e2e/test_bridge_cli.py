"""vmc-bridge as a process: it serves, keeps secrets out of its log, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import httpx

from sim.broker import MosquittoBroker, free_port
from tests.e2e.bridge_rig import BRIDGE, INBOUND_KEY, OUTBOUND_KEY, BridgeProcess, bridge_config


async def test_bridge_process_serves_and_stops_on_sigterm(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    port = free_port()
    config = bridge_config(tmp_path / "bridge.toml", broker.url, port, "http://127.0.0.1:9")
    bridge = BridgeProcess(config, tmp_path / "bridge.log", port)
    try:
        await bridge.start()
        async with httpx.AsyncClient(base_url=bridge.url) as http:
            wrong = await http.post("/api/vmc_search", json={}, headers={"X-API-Key": "nope"})
            assert wrong.status_code == 401
            right = await http.post(
                "/api/vmc_search", json={"vm_id": "m9"}, auth=("ops", "hunter22")
            )
            assert right.json() == {"success": False, "message": "unknown vending machine 'm9'"}
    finally:
        assert await bridge.stop() == 0
    text = bridge.log.read_text()
    for secret in (INBOUND_KEY, "hunter22", OUTBOUND_KEY, "nope"):
        assert secret not in text
    assert (tmp_path / "state" / "bridge.sqlite3").exists()


async def test_bridge_process_port_taken_is_one_line(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    port = free_port()
    config = bridge_config(tmp_path / "bridge.toml", broker.url, port, "http://127.0.0.1:9")
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


# vmc-bridge's serve, with a task that swallows every cancellation (as a library may: see
# bridge.run.cancelled) and a stop budget of half a second.
STUBBORN = """
import asyncio, sys
from bridge import config, run
from vmc.logs import configure_logging

run.STOP_BUDGET_S = 0.5

async def stubborn():
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

async def main():
    loaded = config.load(sys.argv[1])
    sock = run.listening(loaded.listen_host, loaded.listen_port)
    asyncio.create_task(stubborn(), name="stubborn")
    print("serving", flush=True)
    await run.serve(loaded, sock)

configure_logging("info")
asyncio.run(main())
"""


async def test_bridge_stop_is_bounded_when_a_task_ignores_its_cancellation(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = bridge_config(tmp_path / "bridge.toml", broker.url, free_port(), "http://127.0.0.1:9")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        STUBBORN,
        str(config),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"serving\n"
        await asyncio.sleep(1.0)  # its tasks run
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    cut = [line for line in out.decode().splitlines() if "bridge_stop_cut_short" in line]
    assert len(cut) == 1, out.decode()[-2000:]
    assert "stubborn" in cut[0]
