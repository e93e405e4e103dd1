"""``vmctl`` against a real ``vmcd`` over its control socket: status, transactions, events,
config check; without a daemon, without permission, and with clients that misbehave.

vmcd runs as a subprocess on a pty with the simulated VMC (and a real Mosquitto where the
cloud is involved); vmctl runs as a subprocess too, as a technician would run it. The human
output of ``vmctl status`` is read off a real terminal (tmux).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.pty import PtyPair
from sim.broker import MosquittoBroker, free_port
from sim.daemon_proc import DaemonProcess
from sim.vmc_master import VmcMaster
from tests.e2e.cloud_rig import DEVICE, machine, machine_with_dex
from tests.e2e.console import UNPRIVILEGED, VMCTL, vmctl
from tests.e2e.test_local_stock import events, local_machine
from tests.e2e.test_stock_flow import load_planogram
from tests.e2e.vmcd_proc import Vmcd
from tests.waiting import wait_for
from vmc.control.protocol import MAX_REQUEST
from vmc.journal import JOURNAL_NAME, Journal
from vmc.state_lock import try_lock

"""This uid with none of root's powers over files (see test_startup_mistakes.py)."""


async def as_json(*args: str) -> Any:
    code, out, err = await vmctl(*args, "--json")
    assert (code, err) == (0, ""), err
    return json.loads(out)


def one_line(code: int, out: str, err: str, exit_code: int, fragment: str) -> None:
    """A refusal: nothing on stdout, one line on stderr (no traceback) naming ``fragment``."""
    assert (code, out) == (exit_code, ""), err
    assert err.startswith("vmctl: ")
    assert err.count("\n") == 1, err
    assert fragment in err, err


async def poll_forever(vmc: VmcMaster, polls: list[int]) -> None:
    """A VMC that keeps polling, counting the answers it gets."""
    while True:
        await vmc.poll()
        polls[0] += 1
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def polled_machine(state: Path) -> AsyncIterator[tuple[DaemonProcess, list[int]]]:
    """vmcd without a cloud, its VMC initialised and polling on (the link stays up)."""
    async with local_machine(state) as (daemon, vmc):
        polls = [0]
        polling = asyncio.create_task(poll_forever(vmc, polls))
        try:
            yield daemon, polls
        finally:
            polling.cancel()
            await asyncio.gather(polling, return_exceptions=True)


async def status_where(state: Path, wanted: Any, what: str) -> dict[str, Any]:
    """``vmctl status --json`` once ``wanted(status)`` holds."""
    seen: dict[str, Any] = {}

    async def look() -> bool:
        seen.update(await as_json("status", "--state-dir", str(state)))
        return bool(wanted(seen))

    for _ in range(100):
        if await look():
            return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"no status with {what}: {seen}")


# --- status -------------------------------------------------------------------------------------


async def test_status_of_a_machine_without_a_cloud(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with polled_machine(state) as (_daemon, _polls):
        status = await status_where(
            state, lambda s: s["bus"]["state"] == "enabled", "the reader enabled"
        )
        assert status["version"] == "0.1.0"
        assert status["uptime_s"] > 0
        assert status["decisions"] == "local_accept"
        bus = status["bus"]
        assert bus["link_up"] is True
        assert 0 <= bus["last_poll_age_s"] < 5
        assert bus["vmc"]["level"] == 3
        assert bus["vmc"]["options"] == ["wide_money", "always_idle"]
        assert status["cloud"] == {
            "state": "not_configured",
            "outbox": 0,
            "oldest_unsent_age_s": None,
        }
        assert status["reporter"] == {"state": "not_configured"}
        assert status["stock"]["planogram_version"] is None
        assert status["operating_state"] == "operating"
        assert status["codes"] == []
        socket_file = state / "vmcd.sock"
        assert status["control_socket"] == str(socket_file)
        assert stat.S_IMODE(os.stat(socket_file).st_mode) == 0o660

        code, out, err = await vmctl("status", "--state-dir", str(state))
        assert (code, err) == (0, ""), err
        assert out.startswith("vmcd 0.1.0, up ")
        assert "MDB bus" in out
        assert "enabled: MDB link up" in out
        assert "not configured (no cloud.url)" in out
        assert "codes: none" in out


async def test_status_in_a_terminal(tmp_path: Path) -> None:
    """What a technician sees in a 120-column terminal: tmux runs vmctl, capture-pane reads."""
    state = tmp_path / "state"
    async with polled_machine(state) as (_daemon, _polls):
        await status_where(state, lambda s: s["bus"]["state"] == "enabled", "the reader enabled")
        screen = await in_terminal([str(VMCTL), "status", "--state-dir", str(state)])
    lines = screen.splitlines()
    first = lines[0]
    assert first.startswith("vmcd 0.1.0, up ")
    assert first.endswith("vends decided by vmcd (free vends)")  # one line at 120 columns
    rows = {line.split("  ", 1)[0]: line for line in lines if line and not line[0].isspace()}
    assert "enabled: MDB link up, last poll" in rows["MDB bus"]
    assert "reader enabled for" in rows["MDB bus"]
    assert "not configured (no cloud.url)" in rows["Cloud"]
    assert "not configured (no dex.port)" in rows["DEX reporter"]
    assert "no planogram" in rows["Stock"]
    assert rows["Operating"].split()[1] == "operating;"
    vmc_line = next(line for line in lines if "VMC level 3" in line)
    assert "options: wide_money, always_idle; display 16x2" in vmc_line
    assert "codes: none (nothing to fix)" in lines
    assert "Traceback" not in screen


async def in_terminal(argv: list[str], width: int = 120) -> str:
    """What ``argv`` shows in a real ``width``-column terminal (tmux, read by capture-pane)."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    tmux = ("tmux", "-L", f"vmc-test-{uuid.uuid4().hex[:8]}")
    # A terminal's shell keeps COLUMNS and LINES true to its size; pytest's are not.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    command = f"{shlex.join(argv)}; echo END"
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", str(width), "-y", "40", f"{command}; sleep 600"],
        check=True,
        timeout=30,
        env=env,
    )
    try:
        screen: str = await wait_for(
            lambda: _pane(tmux) if "\nEND" in _pane(tmux) else None, 30, "vmctl in tmux"
        )
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, timeout=30)
    assert "Traceback" not in screen
    return screen


def _pane(tmux: tuple[str, ...]) -> str:
    done = subprocess.run(
        [*tmux, "capture-pane", "-p"], capture_output=True, text=True, timeout=30, check=False
    )
    return done.stdout


async def test_status_codes_for_a_silent_vmc_and_no_broker(tmp_path: Path) -> None:
    state = tmp_path / "state"
    pair = PtyPair()  # nobody plays the VMC on it
    mqtt = f"mqtt://127.0.0.1:{free_port()}"  # and no broker listens there
    daemon = DaemonProcess(pair, state, extra=("--mqtt", mqtt, "--device-id", DEVICE))
    await daemon.start()
    try:
        await wait_for(lambda: events(daemon, "vmcd_started"), 30, "vmcd started")
        status = await status_where(
            state,
            lambda s: {"no_mdb_link", "cloud_offline"} <= set(s["codes"]),
            "no link and no broker",
        )
        assert status["bus"]["state"] == "no_link"
        assert status["bus"]["last_poll_age_s"] is None
        cloud = status["cloud"]
        assert (cloud["state"], cloud["url"], cloud["device_id"]) == ("offline", mqtt, DEVICE)
        assert cloud["last_error"]
        assert status["decisions"] == "cloud"
        code, out, err = await vmctl("status", "--state-dir", str(state))
        assert (code, err) == (0, ""), err
        assert "no_mdb_link" in out
        assert "no POLL from the VMC for 5 s" in out
        assert "cloud_offline" in out
        assert f"offline since {dt.date.today().year}" in out
    finally:
        await daemon.stop()
        pair.close()


async def test_status_with_the_cloud_and_a_dex_port(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine_with_dex(tmp_path, broker) as (rig, line):
        state = rig.daemon.state_dir
        await load_planogram(rig)
        status = await status_where(
            state,
            lambda s: (
                s["cloud"]["state"] == "connected"
                and s["reporter"]["last_read"]
                and s["bus"]["state"] == "enabled"
            ),  # vmcd says the link is up about 1 s after start
            "the cloud connected, the audit read at start and the MDB link up",
        )
        cloud = status["cloud"]
        assert (cloud["url"], cloud["device_id"], cloud["last_error"]) == (
            broker.url,
            DEVICE,
            None,
        )
        assert cloud["outbox"] >= 0
        reporter = status["reporter"]
        assert (reporter["state"], reporter["port"], reporter["protocol"]) == (
            "idle",
            line.pair.device_url,
            "ucs",
        )
        last = reporter["last_read"]
        assert (last["ok"], last["valid"], last["step"]) == (True, True, "")
        assert last["size"] > 0
        assert reporter["last_report"] == last["at"]
        assert status["stock"]["planogram_version"] == 1
        assert status["stock"]["selections"] == 2
        assert (status["decisions"], status["codes"]) == ("cloud", [])
        code, _, err = await vmctl("stock", "inventory", "1=1", "--state-dir", str(state))
        assert (code, err) == (0, ""), err  # through the socket: at its alarm level now
        status = await as_json("status", "--state-dir", str(state))
        assert (status["stock"]["low"], status["codes"]) == (1, ["need_loading"])
        code, out, err = await vmctl("status", "--state-dir", str(state))
        assert (code, err) == (0, ""), err
        assert f"connected to {broker.url} as {DEVICE} since" in out
        assert f"idle on {line.pair.device_url} (ucs); last read" in out
        assert "need_loading   a selection or ingredient is at or under its alarm level" in out


# --- transactions -------------------------------------------------------------------------------


async def test_txn_list_and_show(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig:
        state = str(rig.daemon.state_dir)
        await load_planogram(rig)
        ids = []
        for item in (1, 2):
            txn_id = await rig.backend.lock(DEVICE, "alice")
            assert await rig.customers.purchase(item=item) == "vended"
            await rig.backend.wait_done(txn_id)
            ids.append(txn_id)
        refund = await rig.backend.command(DEVICE, "refund", txn_id=ids[1], amount=50)
        assert refund["ok"], refund

        page = await as_json("txn", "list", "--state-dir", state)
        assert [t["txn_id"] for t in page["txns"]] == ids  # oldest first
        assert [(t["state"], t["selection"], t["refunded"]) for t in page["txns"]] == [
            ("vended", 1, 0),
            ("vended", 2, 50),
        ]
        assert (page["more"], page["decimals"], page["timezone"]) == (False, 2, "UTC")
        last = await as_json("txn", "list", "--limit", "1", "--state-dir", state)
        assert ([t["txn_id"] for t in last["txns"]], last["more"]) == ([ids[1]], True)
        today = dt.datetime.now(dt.UTC).date().isoformat()
        first = await as_json("txn", "list", "--from", today, "--limit", "1", "--state-dir", state)
        assert [t["txn_id"] for t in first["txns"]] == [ids[0]]

        code, out, err = await vmctl("txn", "list", "--state-dir", state)
        assert (code, err) == (0, ""), err
        assert "TXN" in out
        assert "REFUNDED" in out
        for txn_id in ids:
            assert txn_id in out
        assert "0.50" in out  # the refund, in major units

        shown = await as_json("txn", "show", ids[1][:8], "--state-dir", state)
        assert shown["txn"]["txn_id"] == ids[1]
        states = [step["state"] for step in shown["history"]]
        assert states[0] == "locked"
        assert states[-1] == "vended"
        assert [(r["amount"], r["refund_id"]) for r in shown["refunds"]] == [
            (50, refund["result"]["refund_id"])
        ]
        code, out, err = await vmctl("txn", "show", ids[1], "--state-dir", state)
        assert (code, err) == (0, ""), err
        assert ids[1] in out
        assert "vended" in out
        assert refund["result"]["refund_id"] in out

        one_line(
            *await vmctl("txn", "show", "no-such-txn", "--state-dir", state),
            2,
            "no transaction 'no-such-txn' in the journal",
        )
        one_line(
            *await vmctl("txn", "list", "--from", "yesterday", "--state-dir", state),
            2,
            "from: 'yesterday' is not a date",
        )


# --- events -------------------------------------------------------------------------------------


async def test_events_and_follow_until_ctrl_c(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig:
        state = str(rig.daemon.state_dir)
        await load_planogram(rig)
        recent = await as_json("events", "--limit", "50", "--state-dir", state)
        assert recent["cloud"] is True
        kinds = {(item["kind"], item["type"]) for item in recent["items"]}
        assert ("event", "planogram.changed") in kinds
        assert ("reply", "reply") in kinds  # the planogram.set command's reply

        follower = await asyncio.create_subprocess_exec(
            str(VMCTL),
            "events",
            "--follow",
            "--limit",
            "1",
            "--json",
            "--state-dir",
            state,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert follower.stdout is not None
            line = await asyncio.wait_for(follower.stdout.readline(), 30)
            latest = json.loads(line)  # the last one so far: it follows from now on
            assert latest["number"] >= recent["items"][-1]["number"]
            txn_id = await rig.backend.lock(DEVICE, "alice")
            assert await rig.customers.purchase(item=1) == "vended"
            await rig.backend.wait_done(txn_id)
            seen: list[dict[str, Any]] = []
            while not any(i["type"] == "txn.vend" for i in seen):
                line = await asyncio.wait_for(follower.stdout.readline(), 30)
                assert line, "the stream ended"
                seen.append(json.loads(line))
            assert all(i["fields"].get("txn_id") in (None, txn_id) for i in seen)
        finally:
            follower.send_signal(signal.SIGINT)  # Ctrl-C
            _, stopped = await asyncio.wait_for(follower.communicate(), 30)
        assert follower.returncode == 130
        assert stopped == b""  # quietly: no traceback

        code, out, err = await vmctl("events", "--limit", "5", "--state-dir", state)
        assert (code, err) == (0, ""), err
        lines = out.splitlines()
        assert len(lines) == 5
        assert any("txn" in line and f"txn_id={txn_id}" in line for line in lines)


async def test_events_without_a_cloud_are_the_local_book(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with local_machine(state) as (daemon, vmc):
        assert (await vmc.cash_sale(vmc.money(200), 2)).is_ack
        await wait_for(lambda: events(daemon, "cash_sale"), 10, "the cash sale booked")
        recent = await as_json("events", "--state-dir", str(state))
        assert recent["cloud"] is False
        assert [(i["kind"], i["type"], i["fields"]["item"]) for i in recent["items"]] == [
            ("local", "cash_sale", 2)
        ]


# --- config check -------------------------------------------------------------------------------


async def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "vmc.toml"
    state = tmp_path / "state"
    good.write_text(
        f'[mdb]\nport = "uart:///dev/ttyAMA0"\n[daemon]\nstate_dir = "{state}"\n'
        '[dex]\nport = "uart:///dev/ttyUSB0"\n'
    )
    code, out, err = await vmctl("config", "check", str(good))
    assert (code, err) == (0, ""), err
    assert out.startswith(f"{good}: ok (mdb uart:///dev/ttyAMA0 at 0x10, level 3; no cloud;")
    assert f"control socket {state / 'vmcd.sock'})" in out
    assert out.count("\n") == 1
    checked = await as_json("config", "check", str(good))
    assert checked == {"ok": True, "file": str(good), "control_socket": str(state / "vmcd.sock")}
    assert not (state / "vmcd.sock").exists()  # nothing started

    bad = tmp_path / "bad.toml"
    bad.write_text('[mdb]\nport = "uart:///dev/ttyAMA0"\nlevel = 4\n')
    one_line(*await vmctl("config", "check", str(bad)), 2, "mdb.level: 4 is not allowed")
    bad.write_text(f'[daemon]\nstate_dir = "{state}"\n')
    one_line(*await vmctl("config", "check", str(bad)), 2, "mdb.port: no MDB port")
    one_line(*await vmctl("config", "check", str(tmp_path / "none.toml")), 2, "No such file")


# --- no daemon, another socket, no permission ---------------------------------------------------


async def test_without_a_daemon_one_line_and_exit_1(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    socket_file = state / "vmcd.sock"
    expected = f"vmcd is not running (no socket at {socket_file})"
    for args in (("status",), ("txn", "list"), ("txn", "show", "x"), ("events", "--follow")):
        one_line(*await vmctl(*args, "--state-dir", str(state)), 1, expected)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_file))
    stale.close()  # a socket file left by a vmcd that crashed
    one_line(*await vmctl("status", "--state-dir", str(state)), 1, expected)
    other = tmp_path / "other.sock"
    one_line(*await vmctl("--socket", str(other), "status"), 1, f"(no socket at {other})")
    one_line(*await vmctl("status", "--socket", str(other)), 1, f"(no socket at {other})")
    env = {"VMC_SOCKET": str(other)}
    one_line(*await vmctl("status", env=env), 1, f"(no socket at {other})")


async def test_a_locked_state_dir_without_a_socket_is_never_written(tmp_path: Path) -> None:
    """The lock held (a vmcd starting, or one serving its socket elsewhere) and no socket
    answering: vmctl waits a moment, then says so, and leaves the journal alone."""
    state = tmp_path / "state"
    Journal(state / JOURNAL_NAME).close()
    held = try_lock(state)
    assert held is not None
    with held:
        code, out, err = await vmctl("stock", "restock", "--state-dir", str(state))
    one_line(code, out, err, 1, f"vmcd holds {state / 'vmcd.lock'} but nothing answers on")
    with contextlib.closing(Journal(state / JOURNAL_NAME)) as journal:
        assert journal.local_reply("x") is None
        assert journal.stock_history() == []


async def test_socket_under_runtime_directory_is_found_from_the_state_dir(tmp_path: Path) -> None:
    """Under systemd the socket is $RUNTIME_DIRECTORY/vmcd.sock; a technician's shell has no
    RUNTIME_DIRECTORY, and finds it through <state_dir>/vmcd.sock all the same."""
    state, run = tmp_path / "state", tmp_path / "run"
    run.mkdir()
    pair = PtyPair()
    vmcd = Vmcd(state, "--mdb", pair.device_url, env={"RUNTIME_DIRECTORY": str(run)})
    try:
        await vmcd.start()
        await vmcd.wait_event("vmcd_started")
        status = await as_json("status", "--state-dir", str(state))
        assert status["control_socket"] == str(run / "vmcd.sock")
        assert os.readlink(state / "vmcd.sock") == str(run / "vmcd.sock")
        code, _, err = await vmctl("status", env={"RUNTIME_DIRECTORY": str(run)})
        assert (code, err) == (0, ""), err

        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vmc", "--mdb", pair.device_url, "--state-dir",
            str(tmp_path / "other"), "--control-socket", str(run / "vmcd.sock"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err_bytes = await asyncio.wait_for(second.communicate(), 60)
        assert (second.returncode, out) == (2, b"")
        assert err_bytes.decode() == (
            f"vmcd: control socket {run / 'vmcd.sock'}: another vmcd serves it; stop it or give"
            " this one --control-socket PATH\n"
        )
        await vmcd.signal_and_wait()
        assert vmcd.proc is not None
        assert vmcd.proc.returncode == 0
        assert not (run / "vmcd.sock").exists()
        assert not (state / "vmcd.sock").is_symlink()
    finally:
        await vmcd.close()
        pair.close()


@pytest.mark.usefixtures("unprivileged")
async def test_socket_permission_denied_is_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with local_machine(state):
        socket_file = state / "vmcd.sock"
        # As on a Pi: the socket is vmc's (mode 0660, group vmc); this user is neither.
        os.chown(socket_file, 12345, 12345)
        code, out, err = await vmctl("status", "--state-dir", str(state), prefix=UNPRIVILEGED)
        one_line(code, out, err, 2, f"permission denied on vmcd's control socket {socket_file}")
        assert "member of its group (vmc)" in err


# --- clients that misbehave -----------------------------------------------------------------------


async def test_hostile_clients_do_not_stall_vmcd_or_the_bus(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with polled_machine(state) as (daemon, polls):
        await status_where(state, lambda s: s["bus"]["state"] == "enabled", "the reader enabled")
        path = str(state / "vmcd.sock")

        def connect() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            return sock

        def misbehave() -> list[socket.socket]:
            garbage, huge, slow = connect(), connect(), connect()
            garbage.sendall(b"\x00\xffnot json at all\n")
            with contextlib.suppress(OSError):  # vmcd may hang up before it has all of it
                huge.sendall(b'{"cmd": "status", "args": {"x": "' + b"y" * 4 * MAX_REQUEST)
            # A reader that asks and asks and never reads what it is sent.
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            with contextlib.suppress(OSError):
                slow.settimeout(5)
                for _ in range(2000):
                    slow.sendall(b'{"id": 1, "cmd": "status"}\n')
            return [garbage, huge, slow, *(connect() for _ in range(100))]

        held = await asyncio.to_thread(misbehave)
        try:
            before = polls[0]
            status = await as_json("status", "--state-dir", str(state))
            assert status["bus"]["state"] == "enabled"
            await wait_for(lambda: polls[0] > before + 10, 20, "the VMC's polls answered")
            code, out, err = await vmctl("stock", "show", "--state-dir", str(state))
            assert (code, err, out) == (
                0,
                "",
                "no planogram: load one with vmctl planogram set FILE\n",
            )
        finally:
            for sock in held:
                sock.close()
        assert daemon.proc is not None
        assert daemon.proc.returncode is None
        assert not events(daemon, "control_command_failed")
