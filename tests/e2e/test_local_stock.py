"""Stock on the machine: ``vmctl stock`` / ``vmctl planogram`` against a real vmcd (on a pty, with
and without the cloud on a real Mosquitto) and against its journal while it does not run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from drivers.pty import PtyPair
from sim.broker import MosquittoBroker
from sim.daemon_proc import DaemonProcess
from sim.scenarios import Customers
from sim.vmc_master import VmcMaster
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.e2e.console import vmctl
from tests.e2e.test_stock_flow import load_planogram
from tests.samples import PLANOGRAM
from tests.waiting import wait_for


async def levels(state_dir: Path) -> dict[int, int]:
    """Each selection's level, as ``vmctl stock show --json`` reports it."""
    code, out, err = await vmctl("stock", "show", "--json", "--state-dir", str(state_dir))
    assert code == 0, err
    return {s["selection"]: s["level"] for s in json.loads(out)["selections"]}


async def ok(state_dir: Path, *args: str) -> dict[str, Any]:
    """A stock operation that must succeed; its JSON result."""
    code, out, err = await vmctl(*args, "--json", "--state-dir", str(state_dir))
    assert (code, err) == (0, ""), err
    result: dict[str, Any] = json.loads(out)
    return result


def refused(code: int, out: str, err: str, fragment: str) -> None:
    assert code == 2
    assert out == ""
    assert err.startswith("vmctl: ")
    assert err.count("\n") == 1, err
    assert fragment in err, err


def outbox_size(state_dir: Path) -> int:
    with contextlib.closing(sqlite3.connect(state_dir / "journal.sqlite3")) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in daemon.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
    return found


@contextlib.asynccontextmanager
async def local_machine(state_dir: Path) -> AsyncIterator[tuple[DaemonProcess, VmcMaster]]:
    """vmcd without a cloud (``--local-approval accept``) on a pty, the sim VMC initialised."""
    pair = PtyPair()
    daemon = DaemonProcess(pair, state_dir, local_approval="accept")
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise()
        yield daemon, vmc
    finally:
        vmc.close()
        await daemon.stop()
        pair.close()


def planogram_file(tmp_path: Path) -> Path:
    path = tmp_path / "planogram.json"
    path.write_text(json.dumps(PLANOGRAM))
    return path


async def test_local_stock_vends_take_stock_without_a_cloud(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with local_machine(state) as (daemon, vmc):
        loaded = await ok(state, "planogram", "set", str(planogram_file(tmp_path)))
        assert (loaded["planogram_version"], loaded["need_loading"]) == (1, True)
        refill = await ok(state, "stock", "refill", "1=3", "2=5")
        assert [(c["selection"], c["before"], c["after"]) for c in refill["changes"]] == [
            (1, 0, 3),
            (2, 0, 5),
        ]
        assert await levels(state) == {1: 3, 2: 5}

        customers = Customers(vmc, random.Random(1), poll_period=0.01)
        assert await customers.purchase(item=1) == "vended"
        await wait_for(lambda: events(daemon, "vend_success"), 10, "the free vend booked")
        assert await levels(state) == {1: 2, 2: 5}  # booked and stock taken in one commit
        assert (await vmc.cash_sale(vmc.money(200), 2)).is_ack
        await wait_for(lambda: events(daemon, "cash_sale"), 10, "the cash sale booked")
        assert await levels(state) == {1: 2, 2: 4}

        code, out, err = await vmctl("stock", "show", "--state-dir", str(state))
        assert code == 0, err
        assert out.startswith("planogram 1, need loading: yes")  # selection 1 is at its alarm
        assert [line.split()[:3] for line in out.splitlines()[2:]] == [
            ["1", "Choco", "bar"],
            ["2", "chips", "4"],
        ]
        # vmcd applied the operations (it holds the lock), and queued nothing for a cloud.
        assert len(events(daemon, "local_op")) == 2
        assert outbox_size(state) == 0


async def test_second_vmcd_on_the_same_state_dir_exits_2_with_one_line_stock(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    async with local_machine(state) as (daemon, _vmc):
        other = PtyPair()
        try:
            second = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "vmc",
                "--mdb",
                other.device_url,
                "--state-dir",
                str(state),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(second.communicate(), 60)
        finally:
            other.close()
        assert second.returncode == 2
        assert out == b""
        assert err.decode().count("\n") == 1
        assert err.decode().startswith(f"vmcd: another vmcd runs on state directory {state}")
        assert daemon.proc is not None
        assert daemon.proc.returncode is None  # the first one serves on


async def test_local_refill_inventory_restock_reach_the_cloud_without_a_reply(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        state = rig.daemon.state_dir
        backend = rig.backend
        await load_planogram(rig)  # from the cloud: s1 3, s2 5
        first = await ok(state, "stock", "refill", "1=2", "2=-1", "--id", "tech-refill-1")
        assert (first["id"], first["repeated"], first["changed"]) == ("tech-refill-1", False, 2)
        again = await ok(state, "stock", "refill", "1=2", "2=-1", "--id", "tech-refill-1")
        assert again == {**first, "repeated": True}
        assert rig.stock_levels() == {"s:1": 5, "s:2": 4}
        await ok(state, "stock", "inventory", "2=1", "--id", "tech-count-1")
        await ok(state, "stock", "restock", "--id", "tech-restock-1")
        assert await levels(state) == {1: 8, 2: 5}

        await backend.wait_for(lambda: len(_local_levels(rig)) == 5 or None, 10)
        assert _local_levels(rig) == [
            ("local:tech-refill-1", 1, 3, 5, "refill"),
            ("local:tech-refill-1", 2, 5, 4, "unload"),
            ("local:tech-count-1", 2, 4, 1, "inventory"),
            ("local:tech-restock-1", 1, 5, 8, "restock"),
            ("local:tech-restock-1", 2, 1, 5, "restock"),
        ]
        # A cloud command after them: its reply is published after anything they queued.
        await backend.command(DEVICE, "stock.refill", lines=[{"selection": 1, "amount": 1}])
        assert {"tech-refill-1", "tech-count-1", "tech-restock-1"}.isdisjoint(backend.replies)
        assert backend.uncorrelated == []
        alarm = [e for e in backend.event_log if e["type"] == "stock.alarm"][-2:]
        assert [(a["op_id"], a["condition"]) for a in alarm] == [
            ("local:tech-count-1", "low"),
            ("local:tech-restock-1", "ok"),
        ]


def _local_levels(rig: Rig) -> list[tuple[str, int, int, int, str]]:
    return [
        (e["op_id"], e["selection"], e["before"], e["after"], e["reason"])
        for e in rig.backend.event_log
        if e["type"] == "stock.level" and e["op_id"].startswith("local:")
    ]


async def test_local_refill_while_vmcd_is_stopped_is_sent_when_it_starts(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        state = rig.daemon.state_dir
        await load_planogram(rig)
        await rig.daemon.stop()
        config = tmp_path / "vmc.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{state}"\n'
            f'[cloud]\nurl = "{broker.url}"\ndevice_id = "{DEVICE}"\n'
        )
        code, out, err = await vmctl("stock", "refill", "1=4", "--config", str(config))
        assert (code, err) == (0, ""), err
        assert out.startswith("stock.refill ")
        assert "selection 1: 3 -> 7 (refill)" in out
        assert rig.stock_levels() == {"s:1": 7, "s:2": 5}
        assert outbox_size(state) > 0  # the backend must hear of it: queued for vmcd

        await rig.restart_daemon()
        await rig.backend.wait_for(lambda: _local_levels(rig) or None, 15)
        ((op_id, selection, before, after, reason),) = _local_levels(rig)
        assert (selection, before, after, reason) == (1, 3, 7, "refill")
        assert op_id.removeprefix("local:") not in rig.backend.replies


async def test_local_stock_mistakes_are_one_line(tmp_path: Path) -> None:
    code, out, err = await vmctl("stock", "show", "--state-dir", str(tmp_path / "nowhere"))
    refused(code, out, err, "no state directory")
    code, out, err = await vmctl("stock", "restock", "--state-dir", str(tmp_path))
    refused(code, out, err, "no journal in")

    state = tmp_path / "state"
    async with local_machine(state):
        code, out, err = await vmctl("stock", "refill", "1=2", "--state-dir", str(state))
        refused(code, out, err, "refused (no_planogram)")
        bad = tmp_path / "bad.json"
        bad.write_text('{"version": 1,')
        code, out, err = await vmctl("planogram", "set", str(bad), "--state-dir", str(state))
        refused(code, out, err, "not valid JSON")
        code, out, err = await vmctl(
            "planogram", "set", str(tmp_path / "none.json"), "--state-dir", str(state)
        )
        refused(code, out, err, "cannot read")
        bad.write_text(json.dumps({**PLANOGRAM, "selections": [{"number": 1}]}))
        code, out, err = await vmctl("planogram", "set", str(bad), "--state-dir", str(state))
        refused(code, out, err, "refused (missing_field): planogram.selections[0].product")
        await ok(state, "planogram", "set", str(planogram_file(tmp_path)))
        code, out, err = await vmctl("stock", "refill", "1=2", "9=1", "--state-dir", str(state))
        refused(code, out, err, "refused (unknown_key): '9=1': not counted by planogram 1")
        code, out, err = await vmctl("stock", "inventory", "1=lots", "--state-dir", str(state))
        refused(code, out, err, "'1=lots': give KEY=LEVEL")
        assert await levels(state) == {1: 0, 2: 0}
    code, out, err = await vmctl("stock", "refill", "1=-1", "--state-dir", str(state))
    refused(code, out, err, "refused (bad_amount): selection 1: cannot unload 1 from 0")
