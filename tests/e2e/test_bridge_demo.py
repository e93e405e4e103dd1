"""`vmc-sim demo --bridge` (what `scripts/demo --bridge` runs): a third party of the platform
sells through vmc-bridge, vmcd and the simulated VMC; a signal stops all of it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.console import (
    VMC_SIM,
    Running,
    assert_exit_follows_checks,
    session_members,
    wait_until,
)

STOP_S = 5.0
MARGIN_S = 3.0  # a busy 2-core machine


def _books_line(stdout: str, name: str) -> str:
    section = stdout.partition("'s books ---\n")[2]
    line = next(line for line in section.splitlines() if line.strip().startswith(f"{name}:"))
    return line.partition(": ")[2]


def test_bridge_demo_vends_through_the_bridge(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = subprocess.run(
        [VMC_SIM, "demo", "--bridge", "--sessions", "8", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    checks = assert_exit_follows_checks(result)
    for name in ("app sales, books vs VMC", "app sales, feed vs VMC", "callbacks delivered"):
        assert checks[name] in ("match", "ok"), out
    assert "vmc-bridge stopped" in checks
    assert "commands are signed (vmcd trusts " in out  # the backend's key and the bridge's
    vended = [line for line in out.splitlines() if "vmc: vended" in line]
    assert vended, out
    assert all("demo-app: vended, charged" in line for line in vended), out
    callbacks = dict(
        part.rsplit(" ", 1) for part in _books_line(out, "callbacks").split(", ")
    )  # path -> count
    for path in ("/txn/request", "/txn/vend", "/feed/transactions", "/feed/refills"):
        assert int(callbacks.get(path, 0)) > 0, out
    assert _books_line(out, "duplicates dropped") == "0"
    assert list(temp.iterdir()) == []  # the bridge's SQLite file went with the demo's folder


def test_bridge_demo_sigterm_leaves_no_orphan(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    demo = Running([VMC_SIM, "demo", "--bridge", "--sessions", "100000"], env={"TMPDIR": str(temp)})
    try:
        demo.wait_for_line(lambda line: line.startswith("session   2 "), 90)
        commands = " ".join(cmd for _, cmd in session_members(demo.proc.pid))
        assert "bridge.cli" in commands
        assert "mosquitto" in commands
        assert "-m vmc " in commands
        begun = time.monotonic()
        demo.proc.send_signal(signal.SIGTERM)
        code = demo.wait(STOP_S + MARGIN_S)
        took = time.monotonic() - begun
    finally:
        demo.kill()
    output = demo.output()
    assert code == 128 + signal.SIGTERM, output
    assert took < STOP_S + MARGIN_S
    assert "Traceback" not in output
    assert "vmc-sim: stopped by SIGTERM" in output
    assert wait_until(lambda: not session_members(demo.proc.pid), STOP_S), session_members(
        demo.proc.pid
    )
    assert list(temp.iterdir()) == []
