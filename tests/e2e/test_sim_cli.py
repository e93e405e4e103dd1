"""vmc-sim as a user runs it: mistakes, the demos' reports, replaying what a demo recorded."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from sim.trace import exchanges, read_trace
from tests.e2e.console import (
    VMC_SIM,
    VMCD,
    Running,
    assert_exit_follows_checks,
    demo_checks,
)


def _run(*args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [VMC_SIM, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def _assert_one_line_mistake(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("vmc-sim")


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    path = tmp_path / "t.mdb"
    path.write_text("VMC: 110 010   # RESET\nPER: 100\n")
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["replay", "{tmp}/missing.mdb"],
        ["replay", "{tmp}"],
        ["replay", "{tmp}/garbage.mdb"],
        ["replay", "{tmp}/binary.mdb"],
        ["replay", "{tmp}/empty.mdb"],
        ["replay", "{trace}", "--port", "pty:///dev/pts/999"],
        ["replay", "{trace}", "--port", "foo://x"],
        ["replay", "{trace}", "--wait", "0"],
        ["vmc", "--port", "pty:///dev/pts/999"],
        ["vmc", "--port", "foo://x"],
        ["vmc", "--wait-reader", "-1"],
        ["demo", "--sessions", "-1"],
        ["demo", "--sessions", "0"],
        ["demo", "--sessions", "many"],
        ["demo", "--level", "4"],
        ["demo", "--poll-ms", "0"],
        ["demo", "--poll-ms", "nan"],
        ["demo", "--policy", "free"],
        ["demo", "--mqtt", "http://localhost"],
        ["demo", "--record", "{tmp}/no/such/dir/x.mdb"],
        ["demo", "--local", "--state-dir", "{trace}"],
        ["demo", "--exe", "--local"],
        ["demo", "--exe", "--record", "{tmp}/x.mdb"],
        ["demo", "--bridge", "--local"],
        ["demo", "--bridge", "--exe"],
        ["bogus"],
        [],
    ],
)
def test_a_mistake_is_one_line_and_exit_2(tmp_path: Path, trace: Path, argv: list[str]) -> None:
    (tmp_path / "garbage.mdb").write_text("this is not a trace\n")
    (tmp_path / "binary.mdb").write_bytes(b"\xff\xfe\x00\x01")
    (tmp_path / "empty.mdb").write_text("# nothing but a comment\n")
    args = [a.format(tmp=tmp_path, trace=trace) for a in argv]
    _assert_one_line_mistake(_run(*args, timeout=60))


def _unreadable(tmp_path: Path) -> Path:
    """A file this user cannot read: mode 000, or for root a write-only sysctl."""
    if os.geteuid() != 0:
        secret = tmp_path / "secret.mdb"
        secret.write_text("VMC: 110 010\nPER: 100\n")
        secret.chmod(0o000)
        return secret
    write_only = Path("/proc/sys/vm/compact_memory")
    try:
        write_only.open().close()
    except PermissionError:
        return write_only
    except OSError:
        pass
    pytest.skip("no file here that root cannot read")


def test_an_unreadable_trace_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _run("replay", str(_unreadable(tmp_path)), timeout=60)
    _assert_one_line_mistake(result)
    assert "cannot read: Permission denied" in result.stderr


def test_version() -> None:
    result = _run("--version", timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"vmc-sim {importlib.metadata.version('vmc')}"


def test_the_cloud_demo_reports_money_and_agreement(tmp_path: Path) -> None:
    result = _run("demo", "--sessions", "6", env={**os.environ, "TMPDIR": str(tmp_path)})
    checks = assert_exit_follows_checks(result)
    assert checks["DEX vs the VMC"] == "match"
    assert checks["app sales, books vs VMC"] == "match"
    assert checks["stock, books vs vmcd"] == "match"
    assert checks["sales report vs books"] == "match"
    assert "--- vmcd's sales report" in result.stdout
    # The remote operations: a voucher refused on another item then used, a credit spent in
    # one multi-vend session, a refund, and the closing data request that reads the audit.
    assert checks["vouchers and credits"] == "ok"
    assert re.search(
        r"voucher: item 2 at its planogram price 1\.20; .*item 1: denied, item 2: vended; used",
        result.stdout,
    )
    assert re.search(
        r"credit: 3\.00 for any item, one session: item 3 vended, item 3 vended;"
        r" used 2\.00, rest 1\.00",
        result.stdout,
    )
    assert re.search(
        r"refund: \d+\.\d\d of \w+'s first vend, recorded by the machine", result.stdout
    )
    assert re.search(
        r"data request: a DEX read now, \d+ progress event\(s\) up to \d+ bytes, result ok",
        result.stdout,
    )
    # Seed 1's fourth session takes item 2 to its alarm level: the alarm, the refill, cleared.
    assert "restocked to par: item 1 3, item 2 5, item 3 6" in result.stdout
    assert "stock alarm: item 2 low at 2 (was ok)" in result.stdout
    assert "refill: item 2 +3 (to par)" in result.stdout
    assert "stock alarm: item 2 ok at 5 (was low)" in result.stdout
    assert re.search(r"^ +stock: item \d \d → \d", result.stdout, re.MULTILINE)
    assert re.search(r"^ +charged: \d+\.\d\d$", result.stdout, re.MULTILINE), result.stdout
    assert "{" not in result.stdout  # no Python dict
    assert list(tmp_path.iterdir()) == []


def test_the_exe_demo_sells_through_an_executive_machine(tmp_path: Path) -> None:
    result = _run("demo", "--exe", "--sessions", "8", env={**os.environ, "TMPDIR": str(tmp_path)})
    checks = assert_exit_follows_checks(result)
    assert checks["app sales, books vs VMC"] == "match"
    assert checks["one VEND a selection"] == "ok"
    assert checks["continuous polling"] == "ok"
    assert "price change: line 1 1.50 -> 1.70" in result.stdout
    assert "the VMC is silent: link down, reader inactive" in result.stdout
    assert "the VMC answers again: link up, reader enabled" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_local_demo_speaks_plainly_and_claims_no_folder(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = _run("demo", "--local", "--sessions", "6", env={**os.environ, "TMPDIR": str(temp)})
    checks = assert_exit_follows_checks(result)
    assert checks["free vends, journal vs VMC"] == "match"
    assert "reader initialised: level 3, currency ISO 4217 978 with 2 decimals" in result.stdout
    assert "ReaderInfo(" not in result.stdout
    assert str(temp) not in result.stdout  # its state folder is gone: it is not named
    assert list(temp.iterdir()) == []


def test_the_local_demo_keeps_the_state_dir_it_names(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = _run("demo", "--local", "--sessions", "3", "--state-dir", str(state))
    assert_exit_follows_checks(result)
    assert f"kept in {state}" in result.stdout
    assert (state / "journal.sqlite3").exists()
    assert (state / "vmcd.log").exists()


def _replay_against_a_fresh_vmcd(
    tmp_path: Path, recorded: Path, level: int, *, reader_after_s: float = 0.0
) -> tuple[int, str]:
    """`vmc-sim replay` on a pty of its own; vmcd started on it once the replay waits."""
    replay = Running([VMC_SIM, "replay", str(recorded)])
    vmcd: Running | None = None
    try:
        waiting = replay.wait_for_line(lambda line: line.startswith("waiting for a reader"), 30)
        device = waiting.split()[-1]
        assert f"give the reader this port: pty://{device}\n" in replay.output()
        time.sleep(reader_after_s)  # a reader that comes later: the replay must still be there
        assert replay.proc.poll() is None, replay.output()
        state = str(tmp_path / "replay-state")
        argv = [VMCD, "--mdb", f"pty://{device}", "--level", str(level), "--state-dir", state]
        vmcd = Running([*argv, "--local-approval", "accept"])
        code = replay.wait(120)
    finally:
        replay.kill()
        if vmcd is not None:
            vmcd.terminate()
    return code, replay.output()


def test_replay_waits_for_a_reader_on_its_own_pty(tmp_path: Path, trace: Path) -> None:
    code, output = _replay_against_a_fresh_vmcd(tmp_path, trace, 3, reader_after_s=1.5)
    assert code == 0, output
    assert "# 0 answer(s) differ in kind" in output


def test_replay_gives_up_on_a_reader_that_never_comes(trace: Path) -> None:
    result = _run("replay", str(trace), "--wait-reader", "0.5", timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "vmc-sim: the reader did not answer within 0.5 s"
    )


@pytest.mark.parametrize("level", [1, 3])
def test_a_demo_recording_replays_against_a_fresh_vmcd(tmp_path: Path, level: int) -> None:
    recorded = tmp_path / "demo.mdb"
    demo = _run(
        "demo", "--local", "--level", str(level), "--sessions", "16", "--seed", "2",
        "--record", str(recorded),
    )  # fmt: skip
    assert demo_checks(demo.stdout)["sessions"] == "ok", demo.stdout + demo.stderr
    lines = read_trace(recorded)
    first, answer = next(exchanges(lines))
    assert first.comment == "RESET"
    assert answer is not None  # no unanswered start-up probes
    assert any(line.comment == "BUS RESET" for line in lines)
    code, output = _replay_against_a_fresh_vmcd(tmp_path, recorded, level)
    assert code == 0, output
    assert "# 0 answer(s) differ in kind" in output


def test_the_cloud_demo_splits_paid_free_and_test_vends_in_the_sales_report(
    tmp_path: Path,
) -> None:
    """Seed 3 plays a free and a test app vend: vmcd's sales report, the backend's books and
    the VMC's audit (PA3/PA4, not PA2) agree on the split."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = _run("demo", "--sessions", "6", "--seed", "3", env=env)
    checks = assert_exit_follows_checks(result)
    assert checks["sales report vs books"] == "match"
    assert checks["app sales, books vs VMC"] == "match"
    assert checks["DEX vs the VMC"] == "match"
    assert re.search(
        r"by vend type: paid \d+ \(\d+\.\d\d\), free 1 \(0\.00\), test 1", result.stdout
    )
    assert "app_free_vend" in result.stdout
    assert "app_test_vend" in result.stdout
