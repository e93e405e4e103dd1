"""Run ``vmc-bridge`` as a process: its configuration written, started, waited for, stopped."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from sim import StartError
from sim.broker import free_port
from sim.daemon_proc import terminate

START_S = 20.0
STOP_S = 3.0  # then SIGKILL


@dataclass(frozen=True, slots=True)
class BridgeSetup:
    """What the bridge is told: the broker, one third party and its keys, the lock's timeout,
    the key it signs commands with."""

    mqtt_url: str
    third_party: str
    base_url: str
    machine: str
    api_key: str
    outbound_key: str
    lock_timeout: float
    command_key_file: Path | None = None

    def toml(self, port: int, database: Path) -> str:
        key = self.command_key_file
        return (
            f'[bridge]\nmqtt = "{self.mqtt_url}"\nlisten = "127.0.0.1:{port}"\n'
            f'database = "sqlite:///{database}"\nlock_timeout = {self.lock_timeout}\n'
            + ("" if key is None else f'command_key_file = "{key}"\n')
            + "\n"
            f'[[third_party]]\nname = "{self.third_party}"\nbase_url = "{self.base_url}"\n'
            f'machines = ["{self.machine}"]\napi_keys = ["{self.api_key}"]\n'
            f'outbound_api_key = "{self.outbound_key}"\n'
        )


class BridgeProcess:
    """``vmc-bridge`` on a free port, its state and log in ``folder``."""

    def __init__(self, setup: BridgeSetup, folder: Path) -> None:
        self.port = free_port()
        self.config = folder / "bridge.toml"
        self.config.write_text(setup.toml(self.port, folder / "bridge.sqlite3"))
        self.log_path = folder / "bridge.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start it and wait until it serves HTTP and is connected to the broker;
        StartError (with its last words) when it does not."""
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.cli",
            "--config",
            str(self.config),
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(START_S), httpx.AsyncClient(base_url=self.url) as http:
                while not (await self._serving(http) and self._connected()):
                    if self.proc.returncode is not None:
                        break
                    await asyncio.sleep(0.1)
        except TimeoutError:
            raise StartError(f"vmc-bridge did not start within {START_S:g} s") from None
        if self.proc.returncode is not None:
            raise StartError(f"vmc-bridge stopped at start: {self._last_line()}")

    async def _serving(self, http: httpx.AsyncClient) -> bool:
        try:
            return (await http.get("/openapi.json")).status_code == 200
        except httpx.HTTPError:
            return False

    def _connected(self) -> bool:
        text = self.log_path.read_text(errors="replace")
        return '"link": "events"' in text and '"link": "commands"' in text

    def _last_line(self) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"

    async def stop(self, timeout: float = STOP_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; its exit code."""
        proc = self.proc
        if proc is None:
            return None
        code = await terminate(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code
