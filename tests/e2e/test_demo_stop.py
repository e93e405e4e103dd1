"""Stopping the demo and the simulated VMC: quick, quiet, and nothing left behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sim.trace import read_trace
from tests.e2e.console import VMC_SIM, VMCD, Running, session_members, wait_until

STOP_S = 5.0
MARGIN_S = 3.0  # a busy 2-core machine; the stop itself takes well under a second


def _is_session(number: int) -> Callable[[str], bool]:
    return lambda line: line.startswith("session") and line.split()[1] == str(number)


@pytest.mark.parametrize(
    ("sig", "whole_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c-to-the-group", "sigterm-to-the-demo"],
)
def test_a_signal_stops_the_whole_demo(tmp_path: Path, sig: int, whole_group: bool) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    demo = Running([VMC_SIM, "demo", "--sessions", "100000"], env={"TMPDIR": str(temp)})
    try:
        demo.wait_for_line(_is_session(2), 60)
        started = session_members(demo.proc.pid)
        commands = " ".join(cmd for _, cmd in started)
        assert "mosquitto" in commands
        assert "-m vmc " in commands  # vmcd
        assert "vmc.services.bus_process" in commands
        assert any(temp in Path(p).parents for p in commands.split() if p.startswith("/"))
        begun = time.monotonic()
        if whole_group:
            os.killpg(demo.proc.pid, sig)
        else:
            demo.proc.send_signal(sig)
        code = demo.wait(STOP_S + MARGIN_S)
        took = time.monotonic() - begun
    finally:
        demo.kill()
    output = demo.output()
    assert code == 128 + sig, output
    assert took < STOP_S + MARGIN_S
    assert "Traceback" not in output
    assert f"vmc-sim: stopped by {signal.Signals(sig).name}" in output
    assert wait_until(lambda: not session_members(demo.proc.pid), STOP_S), session_members(
        demo.proc.pid
    )
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_stops_the_simulated_vmc(tmp_path: Path, sig: int) -> None:
    """`vmc-sim vmc` selling through a real vmcd: stopped quietly, its recording written."""
    trace = tmp_path / "vmc.mdb"
    vmc = Running([VMC_SIM, "vmc", "--sessions", "100000", "--record", str(trace)])
    vmcd: Running | None = None
    try:
        line = vmc.wait_for_line(lambda line: line.startswith("give the reader"), 30)
        port = line.split()[-1]
        state = str(tmp_path / "state")
        vmcd = Running([VMCD, "--mdb", port, "--state-dir", state, "--local-approval", "accept"])
        vmc.wait_for_line(_is_session(2), 60)
        begun = time.monotonic()
        vmc.proc.send_signal(sig)
        code = vmc.wait(STOP_S + MARGIN_S)
        took = time.monotonic() - begun
    finally:
        vmc.kill()
        if vmcd is not None:
            vmcd.terminate()
    assert code == 128 + sig, vmc.output()
    assert took < STOP_S + MARGIN_S
    assert "Traceback" not in vmc.output()
    assert any(line.comment == "VEND REQUEST" for line in read_trace(trace))


def test_ctrl_c_while_the_replay_waits_for_a_reader(tmp_path: Path) -> None:
    trace = tmp_path / "t.mdb"
    trace.write_text("VMC: 110 010   # RESET\nPER: 100\n")
    replay = Running([VMC_SIM, "replay", str(trace)])
    try:
        replay.wait_for_line(lambda line: line.startswith("waiting for a reader on /dev/"), 30)
        os.killpg(replay.proc.pid, signal.SIGINT)
        code = replay.wait(STOP_S + MARGIN_S)
    finally:
        replay.kill()
    assert code == 128 + signal.SIGINT
    assert "Traceback" not in replay.output()
