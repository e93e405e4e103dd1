"""The real ``vmcd`` console script as a subprocess, for stop, watchdog and missing-port tests.

Its JSON log lines go to a file the tests read as events; its bus process is found as its
child in /proc, so a test can check that a stop leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sim.daemon_proc import VmcdProcess
from tests.waiting import wait_for

VMCD = Path(sys.executable).parent / "vmcd"
# What a busy 2-core machine may add to vmcd's own stop budget before a test calls it slow.
STOP_MARGIN_S = 3.0


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def alive(pid: int) -> bool:
    """Running or stopped, not a zombie and not gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Vmcd(VmcdProcess):
    """One ``vmcd`` run: ``start``, watch its log, ``signal_and_wait`` for the measured stop."""

    def __init__(self, state_dir: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        argv = [str(VMCD), "--state-dir", str(state_dir), "--log-level", "info", *args]
        super().__init__(argv, state_dir, env=env or {}, own_group=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def bus_pid(self) -> int | None:
        """The bus process, if one is running now."""
        kids = [pid for pid in children(self.pid) if alive(pid)]
        return kids[0] if len(kids) == 1 else None

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.lines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (name is None or event.get("event") == name):
                found.append(event)
        return found

    async def wait_event(self, name: str, count: int = 1, timeout: float = 20.0) -> list[Any]:
        return await wait_for(  # type: ignore[no-any-return]
            lambda: len(self.events(name)) >= count and self.events(name),
            timeout,
            f"{count} x {name} in {self.log_path}",
        )

    async def signal_and_wait(
        self, sig: int = signal.SIGTERM, *, group: bool = False, timeout: float = 60.0
    ) -> float:
        """Send ``sig`` (to the process group, as Ctrl-C does, with ``group``); the seconds
        until vmcd exited."""
        assert self.proc is not None
        started = time.monotonic()
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        await asyncio.wait_for(self.proc.wait(), timeout)
        return time.monotonic() - started

    async def close(self) -> None:
        """Whatever a test left running: kill it, and its bus process with it."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            for pid in children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            await proc.wait()
        self.close_log()
