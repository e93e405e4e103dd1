"""How vmcd reaches its broker: MQTT 3.1.1 fallback, username/password, TLS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from drivers.pty import PtyPair
from sim.backend import SimBackend
from sim.broker import MosquittoBroker
from sim.daemon_proc import DaemonProcess
from sim.vmc_master import VmcMaster
from tests.e2e.mqtt_proxy import V311OnlyProxy
from tests.waiting import wait_until

DEVICE = "m7"


@contextlib.asynccontextmanager
async def _daemon(tmp_path: Path, *extra: str) -> AsyncIterator[DaemonProcess]:
    pair = PtyPair()
    daemon = DaemonProcess(pair, tmp_path / "state", extra=extra)
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise()
        yield daemon
    finally:
        vmc.close()
        await daemon.stop()
        pair.close()


@contextlib.asynccontextmanager
async def _backend(url: str, **kwargs: str) -> AsyncIterator[SimBackend]:
    backend = SimBackend(url, **kwargs)  # type: ignore[arg-type]
    task = asyncio.create_task(backend.run())
    try:
        await backend.ready()
        yield backend
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_falls_back_to_mqtt_311(tmp_path: Path, broker: MosquittoBroker) -> None:
    proxy = V311OnlyProxy(broker.port)
    await proxy.start()
    try:
        async with (
            _backend(broker.url) as backend,
            _daemon(tmp_path, "--mqtt", proxy.url, "--device-id", DEVICE) as daemon,
        ):
            await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 15)
            await backend.wait_for(
                lambda: (backend.state.get(DEVICE) or {}).get("reader") == "enabled", 10
            )
            reply = await backend.command(DEVICE, "lock", ref="x")
            assert reply["ok"]
            assert proxy.refused_v5 >= 1
            assert proxy.relayed >= 1
            log = daemon.log_path.read_text()
            assert '"mqtt_v5_refused"' in log
            assert '"protocol": "V311"' in log
    finally:
        await proxy.close()


async def test_username_and_password(tmp_path: Path) -> None:
    with MosquittoBroker(users={DEVICE: "s3cret-device", "backend": "s3cret-backend"}) as broker:
        config = tmp_path / "vmc.toml"
        config.write_text(
            f'[cloud]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\n'
            f'username = "{DEVICE}"\npassword = "s3cret-device"\n'
        )
        async with (
            _backend(broker.url, username="backend", password="s3cret-backend") as backend,
            _daemon(tmp_path, "--config", str(config)) as daemon,
        ):
            await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 15)
            assert "s3cret" not in daemon.log_path.read_text()


async def test_a_wrong_password_is_retried_not_fatal(tmp_path: Path) -> None:
    with MosquittoBroker(users={DEVICE: "right"}) as broker:
        config = tmp_path / "vmc.toml"
        config.write_text(
            f'[cloud]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\n'
            f'username = "{DEVICE}"\npassword = "wrong"\n'
        )
        async with _daemon(tmp_path, "--config", str(config)) as daemon:
            assert await wait_until(
                lambda: daemon.log_path.read_text().count('"mqtt_disconnected"') >= 2
            )
            assert daemon.proc is not None
            assert daemon.proc.returncode is None  # still serving the VMC
            assert '"mqtt_connected"' not in daemon.log_path.read_text()


async def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    with MosquittoBroker(tls=True) as broker:
        assert broker.ca_file is not None
        config = tmp_path / "vmc.toml"
        config.write_text(
            f'[cloud]\nurl = "{broker.tls_url}"\ndevice_id = "{DEVICE}"\n'
            f'ca_file = "{broker.ca_file}"\n'
        )
        async with _backend(broker.url) as backend, _daemon(tmp_path, "--config", str(config)):
            await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 15)
