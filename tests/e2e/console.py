"""The installed console scripts run as subprocesses, with their output read as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
VMC_SIM = str(BIN / "vmc-sim")
VMCD = str(BIN / "vmcd")
VMCTL = BIN / "vmctl"
UNPRIVILEGED = ("unshare", "--user")
"""A prefix that runs a command as this uid without root's powers, even when tests run as root."""


class Running:
    """A console script started in a session of its own; stdout and stderr read as one stream."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, wanted: Callable[[str], bool], timeout: float) -> str:
        """The first line that ``wanted`` accepts; AssertionError (with the output) if none."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((line for line in self.lines if wanted(line)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no such line within {timeout} s:\n{self.output()}")
                self._changed.wait(left)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def output(self) -> str:
        return "".join(self.lines)

    def terminate(self, timeout: float = 30) -> None:
        """SIGTERM, a wait, then nothing of its process group is left."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def kill(self) -> None:
        """Clean-up for a test that failed midway: its whole process group goes, even when
        the script itself is gone and left children behind (a pty number they hold, or reopen,
        would be given to the next test)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process in session ``sid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue  # gone while we looked
        state, session = fields[0], int(fields[3])
        if session == sid and state != "Z":
            members.append((int(stat.parent.name), cmdline.replace(b"\0", b" ").decode()))
    return members


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def demo_checks(stdout: str) -> dict[str, str]:
    """The closing checks section: check name -> verdict word."""
    section = stdout.partition("--- checks ---\n")[2]
    return {
        name.strip(): rest.split()[0]
        for name, _, rest in (line.partition(": ") for line in section.splitlines()[:-1])
    }


def assert_exit_follows_checks(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Every check agrees, and the exit code is 0.

    The one allowance is bus timing: over a pty on a busy machine the kernel can hold an
    answer past 5 ms, and then the demo must say FAILED and exit 1, as it does. When it held
    one past the VMC's own wait ("no answer"), that customer's session broke as a real VMC's
    would: ``sessions`` may fail with it, while every money and stock check still agrees.
    """
    checks = demo_checks(result.stdout)
    assert checks, result.stdout + result.stderr
    failed = {name for name, word in checks.items() if word not in ("ok", "match")}
    allowed = {"bus timing"}
    if "bus timing" in failed and "no answer" in _check_line(result.stdout, "bus timing"):
        allowed.add("sessions")
    assert failed <= allowed, result.stdout
    assert result.returncode == (1 if failed else 0), result.stdout + result.stderr
    return checks


def _check_line(stdout: str, name: str) -> str:
    section = stdout.partition("--- checks ---\n")[2]
    return next(line for line in section.splitlines() if line.strip().startswith(f"{name}:"))


async def vmctl(
    *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
) -> tuple[int, str, str]:
    """Run vmctl as a technician would; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        str(VMCTL),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
