"""vmcd as a real subprocess on a pty pair, driven by the simulated VMC."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.pty import PtyPair
from sim.daemon_proc import DaemonProcess
from sim.replay import replay_over_port
from sim.scenarios import Customers, run_customers
from sim.trace import read_trace
from sim.vmc_master import VmcMaster
from tests.corpus import MDB
from tests.e2e.console import assert_exit_follows_checks
from tests.waiting import wait_until
from vmc.journal import Journal


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.mark.parametrize("level", [1, 3])
async def test_sessions_complete_against_the_daemon(tmp_path: Path, level: int) -> None:
    pair = PtyPair()
    daemon = DaemonProcess(pair, tmp_path, level=level)
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise(level=level)
        customers = Customers(vmc, random.Random(7), poll_period=0.01)
        report = await run_customers(customers, 15)
    finally:
        vmc.close()
        code = await daemon.stop()
        pair.close()
    assert code == 0, daemon.log_path.read_text()[-2000:]
    assert not report.errors, report.errors
    outcomes = report.outcomes()
    vended = outcomes.get("vended", 0) + 2 * outcomes.get("multi_vend", 0)
    journal = Journal(tmp_path / "journal.sqlite3")
    assert sum(r.kind == "vend_success" for r in journal.records()) == vended
    journal.close()
    log = daemon.log_path.read_text()
    assert '"event": "vmcd_stopped"' in log


async def test_bus_process_is_restarted_after_a_crash(tmp_path: Path) -> None:
    pair = PtyPair()
    daemon = DaemonProcess(pair, tmp_path, level=3)
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise()
        assert daemon.proc is not None
        daemon_pid = daemon.proc.pid
        (bus_pid,) = _children(daemon_pid)
        os.kill(bus_pid, signal.SIGKILL)
        assert await wait_until(lambda: _children(daemon_pid) not in ([], [bus_pid]))
        await vmc.initialise()  # a VMC re-initialises a reader that went silent
        report = await run_customers(
            Customers(vmc, random.Random(3), poll_period=0.01), 3, weights={"purchase": 1}
        )
        assert report.sessions_ok == 3
    finally:
        vmc.close()
        await daemon.stop()
        pair.close()


async def test_bus_process_exits_when_daemon_is_killed(tmp_path: Path) -> None:
    pair = PtyPair()
    daemon = DaemonProcess(pair, tmp_path)
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise()
        assert daemon.proc is not None
        (bus_pid,) = _children(daemon.proc.pid)
        daemon.kill()
        await daemon.proc.wait()
        assert await wait_until(lambda: not _alive(bus_pid))
        assert (await vmc.poll()).timed_out
    finally:
        vmc.close()
        await daemon.stop()
        pair.close()


@MDB.needed
async def test_replay_of_corpus_init_matches_in_kind(tmp_path: Path) -> None:
    lines = read_trace(MDB.path("firmware-usbhost_l1_vend_session.mdb"))
    enable = next(i for i, line in enumerate(lines) if line.comment == "READER ENABLE")
    pair = PtyPair()
    daemon = DaemonProcess(pair, tmp_path, level=1, local_approval="deny")
    await daemon.start()
    try:
        probe = VmcMaster(pair.master, answer_timeout=0.2)
        await probe.initialise(level=1)  # waits until the daemon answers
        probe.close()
        mismatches = await replay_over_port(pair.master, lines[: enable + 2], wait_s=0.2)
    finally:
        await daemon.stop()
        pair.close()
    assert not mismatches, "\n".join(m.report() for m in mismatches)


def test_bad_configuration_is_refused_at_start(tmp_path: Path) -> None:
    config = tmp_path / "vmc.toml"
    config.write_text('[mdb]\nport = "pty:///dev/pts/0"\nlevel = 7\n')
    result = subprocess.run(
        [sys.executable, "-m", "vmc", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "mdb.level" in result.stderr
    assert "1, 2, 3" in result.stderr


def test_replay_cli_reports_differences_in_trace_format(recorded_trace: Path) -> None:
    """Against a reader that never answers, every expected answer differs."""
    pair = PtyPair()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "sim",
                "replay",
                str(recorded_trace),
                "--port",
                f"pty://{pair.device_path}",
                "--wait",
                "0.01",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        pair.close()
    assert result.returncode == 1
    assert "VMC: 110 010" in result.stdout
    assert "# expected ACK" in result.stdout


def test_the_readme_demo_runs(tmp_path: Path) -> None:
    """The README's main command, as a newcomer runs it (minus the venv bootstrap)."""
    trace = tmp_path / "demo.mdb"
    result = subprocess.run(
        [sys.executable, "-m", "sim", "demo", "--sessions", "12", "--record", str(trace)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_exit_follows_checks(result)
    assert "the backend's books" in result.stdout
    assert "backend: success" in result.stdout
    assert " ERR " not in result.stdout
    assert read_trace(trace)


def test_the_local_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sim", "demo", "--local", "--sessions", "8"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_exit_follows_checks(result)
    assert "errors: 0" in result.stdout
    assert "vend_success (free)=" in result.stdout
