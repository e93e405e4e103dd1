"""Start the real vmcd as a subprocess on the device end of a pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from drivers.pty import PtyPair


def _pin_to(cpu: int) -> Callable[[], None]:
    return lambda: os.sched_setaffinity(0, {cpu})


class VmcdProcess:
    """One ``vmcd`` run from ``argv``, its log (JSON lines) appended to ``log_path``
    (``state_dir/vmcd.log`` by default).

    ``cpu`` pins the daemon to that CPU (the bus process it spawns inherits the affinity);
    ``own_group`` starts it in a process group of its own, as a shell job is.
    """

    def __init__(
        self,
        argv: list[str],
        state_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        cpu: int | None = None,
        own_group: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.args = argv
        self.state_dir = state_dir
        self.log_path = log_path or state_dir / "vmcd.log"
        self.env = None if env is None else {**os.environ, **env}
        self.cpu = cpu
        self.own_group = own_group
        self.proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
            preexec_fn=None if self.cpu is None else _pin_to(self.cpu),
            process_group=0 if self.own_group else None,
        )

    def kill(self) -> None:
        """SIGKILL the daemon (its bus process exits when its socket closes)."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def stop(self, timeout: float = 10.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        code = await terminate(proc, timeout)
        self.close_log()
        return code

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class DaemonProcess(VmcdProcess):
    """``vmcd`` on ``pair.device_url`` with the simulator's usual flags.

    ``program``: what Python runs (``-m vmc`` by default; a benchmark may run a script that
    wraps the daemon).
    """

    def __init__(
        self,
        pair: PtyPair,
        state_dir: Path,
        *,
        level: int = 3,
        address: int = 0x10,
        local_approval: str = "accept",
        extra: tuple[str, ...] = (),
        log_level: str = "info",
        cpu: int | None = None,
        program: tuple[str, ...] = ("-m", "vmc"),
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        argv = [
            sys.executable,
            *program,
            "--mdb",
            pair.device_url,
            "--mdb-address",
            hex(address),
            "--level",
            str(level),
            "--state-dir",
            str(state_dir),
            "--local-approval",
            local_approval,
            "--log-level",
            log_level,
            *extra,
        ]
        super().__init__(argv, state_dir, cpu=cpu, log_path=log_path, env=env)
        self.pair = pair


class ExeDaemonProcess(VmcdProcess):
    """``vmcd --exe`` on ``pair.device_url``: vmc as the Executive master of the simulated VMC."""

    def __init__(
        self,
        pair: PtyPair,
        state_dir: Path,
        *,
        local_approval: str = "deny",
        extra: tuple[str, ...] = (),
        log_level: str = "info",
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "vmc",
            "--exe",
            pair.device_url,
            "--state-dir",
            str(state_dir),
            "--local-approval",
            local_approval,
            "--log-level",
            log_level,
            *extra,
        ]
        super().__init__(argv, state_dir)
        self.pair = pair


async def terminate(proc: asyncio.subprocess.Process, timeout: float) -> int:
    """SIGTERM, then SIGKILL if ``proc`` has not ended after ``timeout``; its exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode
