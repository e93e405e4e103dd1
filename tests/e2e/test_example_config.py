"""The shipped example configuration starts the real vmcd, as docs/raspberry-pi.md installs it.

``systemd/vmc.example.toml`` is used as shipped except for what belongs to one machine, as a
technician would change it: the MDB port (a pty pair here, given with ``--mdb``) and the state
directory (``--state-dir``), both flags the unit could carry too. ``[cloud]`` and ``[dex]`` need
a derived copy of the file, since no flag turns them off or names TLS files: their broker
(``broker.example.com``) is not reachable from a test, and their DEX port names real hardware.
So one test drops both tables (the MDB side alone), one points them at a private Mosquitto with
TLS and the example's own credentials and at a pty, and one points the broker at a closed port
to show that a broker that cannot be reached does not stop the daemon.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from drivers.pty import PtyPair
from sim.broker import MosquittoBroker, free_port
from sim.vmc_master import VmcMaster

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "vmc.example.toml"
VMCD = Path(sys.executable).parent / "vmcd"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0  # the unit allows 15 s


def derive(drop: tuple[str, ...] = (), values: dict[str, str] | None = None) -> str:
    """The example's text without the ``drop`` tables and with ``values`` ("table.key") set.

    A key is set on its line, commented out or not, so the rest of the file stays as shipped;
    a key the example does not mention is an error, so the test notices when the file changes.
    """
    wanted = dict(values or {})
    table = ""
    out: list[str] = []
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            table = stripped.strip("[]")
        if table in drop:
            continue
        key = stripped.lstrip("#").split("=", 1)[0].strip()
        if "=" in stripped and f"{table}.{key}" in wanted:
            out.append(f"{key} = {json.dumps(wanted.pop(f'{table}.{key}'))}")
        else:
            out.append(line)
    assert not wanted, f"the example has no line for {sorted(wanted)}"
    return "\n".join(out) + "\n"


class Vmcd:
    """The real ``vmcd`` console script with a config file, on a pty pair; logs to a file."""

    def __init__(self, tmp_path: Path, config_text: str, pair: PtyPair) -> None:
        self.config = tmp_path / "vmc.toml"
        self.config.write_text(config_text, encoding="utf-8")
        self.state_dir = tmp_path / "state"
        self.log_path = tmp_path / "vmcd.log"
        self.pair = pair
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            str(VMCD),
            "--config",
            str(self.config),
            "--mdb",
            self.pair.device_url,
            "--state-dir",
            str(self.state_dir),
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )

    def events(self) -> list[dict[str, object]]:
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    async def wait_for(self, event: str) -> dict[str, object]:
        """The first log line with ``event``; fails at once if vmcd exits first."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline:
            for line in self.events():
                if line.get("event") == event:
                    return line
            assert self.proc.returncode is None, self.log_path.read_text()[-3000:]
            await asyncio.sleep(0.05)
        pytest.fail(f"no {event} within {START_TIMEOUT_S} s:\n{self.log_path.read_text()[-3000:]}")

    async def terminate(self) -> int:
        """SIGTERM, as systemctl stop sends it; the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._log is not None:
            self._log.close()


@pytest.fixture
def pair() -> Iterator[PtyPair]:
    ptys = PtyPair()
    yield ptys
    ptys.close()


async def test_example_mdb_side_starts_serves_the_vmc_and_stops(
    tmp_path: Path, pair: PtyPair
) -> None:
    vmcd = Vmcd(tmp_path, derive(drop=("cloud", "dex")), pair)
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmcd.start()
        started = await vmcd.wait_for("vmcd_started")
        assert started["decisions"] == "local_deny"  # mdb.local_approval as shipped
        assert started["state_dir"] == str(vmcd.state_dir)
        info = await vmc.initialise()  # the example's [reader] is what a VMC gets
        assert info.level == 3
        assert await vmcd.terminate() == 0
    finally:
        await vmcd.close()
    assert [e["event"] for e in vmcd.events()][-1] == "vmcd_stopped"
    assert (vmcd.state_dir / "journal.sqlite3").exists()


async def test_example_cloud_and_dex_tables_work_against_a_real_broker(
    tmp_path: Path, pair: PtyPair
) -> None:
    shipped = derive()
    assert 'username = "machine-0001"' in shipped
    assert 'password = "change-me"' in shipped
    dex = PtyPair()
    with MosquittoBroker(users={"machine-0001": "change-me"}, tls=True) as broker:
        assert broker.ca_file is not None
        config = derive(
            values={
                "cloud.url": broker.tls_url,
                "cloud.ca_file": str(broker.ca_file),
                "dex.port": dex.device_url,
            }
        )
        vmcd = Vmcd(tmp_path, config, pair)
        try:
            await vmcd.start()
            started = await vmcd.wait_for("vmcd_started")
            assert started["decisions"] == "cloud"
            assert started["device_id"] == "machine-0001"
            await vmcd.wait_for("mqtt_connected")
            assert await vmcd.terminate() == 0
        finally:
            await vmcd.close()
            dex.close()


async def test_example_keeps_running_while_its_broker_is_unreachable(
    tmp_path: Path, pair: PtyPair
) -> None:
    closed = f"mqtts://127.0.0.1:{free_port()}"  # nothing listens there
    dex = PtyPair()
    vmcd = Vmcd(tmp_path, derive(values={"cloud.url": closed, "dex.port": dex.device_url}), pair)
    try:
        await vmcd.start()
        await vmcd.wait_for("vmcd_started")
        await vmcd.wait_for("mqtt_reconnect")  # the first attempt failed and will be retried
        assert vmcd.proc is not None
        assert vmcd.proc.returncode is None
        assert await vmcd.terminate() == 0
    finally:
        await vmcd.close()
        dex.close()
