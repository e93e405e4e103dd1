"""Data requests and ``status.check`` end to end: vmcd on a pty with the cloud on a real
Mosquitto, the simulated VMC serving its audit over DEX on another pty, and ``vmctl dex read``
asking the running vmcd."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

from drivers.pty import PtyPair
from protocols.dex.ucs import Stage
from sim.broker import MosquittoBroker
from sim.dex_source import DexSource, SourceFaults
from sim.scenarios import Customers
from sim.vmc_counters import audit_from_counters
from tests.e2e.cloud_rig import DEVICE, DexLine, Rig, machine, machine_with_dex
from tests.e2e.console import vmctl
from tests.e2e.test_local_stock import events, local_machine
from tests.e2e.test_stock_flow import load_planogram
from tests.samples import AUDIT, PLANOGRAM
from tests.waiting import wait_for
from vmc.data_request import PROGRESS_EVERY_S

PATIENCE_S = 20.0


def _slow_machine(
    tmp_path: Path, broker: MosquittoBroker
) -> contextlib.AbstractAsyncContextManager[tuple[Rig, DexLine]]:
    """A DEX read of about 10 blocks that takes a couple of seconds: progress to see, and time
    to join it."""
    return machine_with_dex(tmp_path, broker, read_at_start=False, block_size=16, baud=1200)


def _events(rig: Rig, kind: str) -> list[dict[str, Any]]:
    return [e for e in rig.backend.event_log if e["type"] == kind]


@contextlib.asynccontextmanager
async def _vmc_idling(rig: Rig) -> AsyncIterator[None]:
    """The VMC with nobody at it: it keeps polling (the MDB link stays up), shows a session the
    reader begins and ends one the reader asks to cancel."""
    customers = Customers(rig.vmc, rig.customers.rng, poll_period=0.02)

    async def idle() -> None:
        while True:
            await customers.idle()

    task = asyncio.create_task(idle())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _reading(rig: Rig) -> dict[str, Any]:
    """Until ``status.check`` shows a DEX read running; that reason."""

    async def probe() -> dict[str, Any] | None:
        status = await rig.backend.check_status(DEVICE)
        found = [r for r in status["reasons"] if r["reason"] == "dex_read" and r["read_id"]]
        assert status["status"] == "busy" or not found
        return found[0] if found else None

    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE_S
    while loop.time() < deadline:
        if (found := await probe()) is not None:
            return found
    raise AssertionError("status.check never showed the DEX read")


async def test_data_request_report_brings_progress_and_one_result(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with _slow_machine(tmp_path, broker) as (rig, line):
        answer = await rig.backend.data_request(DEVICE, report=True, request_id="r-1")
        assert answer.reply["result"] == {
            "request_id": "r-1",
            "report": True,
            "config": False,
            "in_progress": False,
            "read_id": None,
        }
        result = answer.result
        assert result is not None
        (report,) = _events(rig, "audit.report")
        assert report["trigger"] == "request"
        assert (result["ok"], result["read_id"], result["config"], result["error"]) == (
            True,
            report["read_id"],
            None,
            None,
        )
        assert result["report"] == {
            "valid": True,
            "complete": True,
            "crc": report["crc"],
            "size": report["size"],
        }
        assert report["seq"] < result["seq"]  # the report first, in the same commit
        progress = answer.progress
        assert progress, "no data.progress"
        assert {p["read_id"] for p in progress} == {result["read_id"]}
        assert all(p["request_ids"] == ["r-1"] for p in progress)
        assert [p["blocks"] for p in progress] == sorted({p["blocks"] for p in progress})
        assert 0 < progress[-1]["received"] <= report["size"]
        assert all(b["at"] - a["at"] >= PROGRESS_EVERY_S for a, b in itertools.pairwise(progress))
        assert progress[-1]["seq"] < report["seq"]
        assert len(line.source.results) == 1  # one read
        assert len(_events(rig, "data.result")) == 1


async def test_data_request_config_alone_at_once_and_with_a_report_in_one_result(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    secrets = '[cloud]\nusername = "m1"\npassword = "s3cret-pw"\n'
    async with machine_with_dex(tmp_path, broker, secrets, read_at_start=False) as (rig, line):
        await load_planogram(rig)
        answer = await rig.backend.data_request(DEVICE, config=True, request_id="c-1")
        result = answer.result
        assert result is not None
        assert (result["ok"], result["read_id"], result["report"], result["error"]) == (
            True,
            None,
            None,
            None,
        )
        assert answer.progress == []
        assert line.source.results == []  # no read for a config
        config = result["config"]
        assert config["versions"] == {
            "vmc": version("vmc"),
            "contract": 1,
            "python": config["versions"]["python"],
        }
        settings = config["settings"]
        assert (settings["cloud"]["password"], settings["cloud"]["username"]) == ("***", "m1")
        assert settings["cloud"]["device_id"] == DEVICE
        assert settings["dex"]["port"] == line.pair.device_url
        assert settings["reader"]["currency"] == 978
        assert "s3cret-pw" not in repr(result)
        assert config["planogram"]["version"] == PLANOGRAM["version"]
        assert [s["number"] for s in config["planogram"]["selections"]] == [1, 2]

        both = await rig.backend.data_request(DEVICE, report=True, config=True)
        assert both.result is not None
        (report,) = _events(rig, "audit.report")
        assert both.result["read_id"] == report["read_id"]
        assert both.result["report"]["valid"] is True
        assert both.result["config"] == config
        assert both.reply["result"]["request_id"] == both.reply["id"]  # defaults to the cmd id


async def test_data_request_same_id_is_coalesced_and_a_new_id_joins_the_read(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with _slow_machine(tmp_path, broker) as (rig, line):
        backend = rig.backend
        asked: list[dict[str, Any]] = [
            {"id": "cmd-1", "request_id": "r-7", "report": True},
            {"id": "cmd-2", "request_id": "r-7", "config": True},  # seed 003: the same request
            {"id": "cmd-3", "request_id": "r-8", "report": True},  # joins the read
        ]
        for command in asked:
            await backend.send(DEVICE, {"op": "data.request", **command})
        replies = await backend.wait_for(
            lambda: (
                [backend.replies[c["id"]] for c in asked]
                if all(c["id"] in backend.replies for c in asked)
                else None
            ),
            10,
        )
        assert [(r["ok"], r["result"]["in_progress"]) for r in replies] == [
            (True, False),
            (True, True),
            (True, False),
        ]
        assert (replies[1]["result"]["report"], replies[1]["result"]["config"]) == (True, True)
        first, second = await backend.wait_for(
            lambda: (
                (*backend.data_results("r-7"), *backend.data_results("r-8"))
                if backend.data_results("r-7") and backend.data_results("r-8")
                else None
            ),
            30,
        )
        (report,) = _events(rig, "audit.report")
        assert first["read_id"] == second["read_id"] == report["read_id"]
        assert first["config"] is not None
        assert second["config"] is None
        assert len(_events(rig, "data.result")) == 2
        assert backend.data_progress("r-8") == backend.data_progress("r-7") != []
        assert len(_events(rig, "audit.report")) == 1
        assert len(line.source.results) == 1  # one read for all three

        again = await backend.data_request(DEVICE, report=True, request_id="r-7")
        assert again.reply["result"]["in_progress"] is False  # done: a new request now
        assert again.result is not None
        assert again.result["read_id"] not in (None, report["read_id"])
        assert len(line.source.results) == 2


async def test_data_request_failing_read_names_the_step(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    silent = SourceFaults(silent_from_block=3)  # the VMC goes quiet mid-audit
    async with machine_with_dex(
        tmp_path, broker, read_at_start=False, block_size=16, faults=silent
    ) as (rig, _line):
        answer = await rig.backend.data_request(DEVICE, report=True, config=True)
        result = answer.result
        assert result is not None
        (failed,) = _events(rig, "audit.failed")
        assert (result["ok"], result["read_id"], result["report"]) == (
            False,
            failed["read_id"],
            None,
        )
        assert result["error"] == {
            "step": "data block 3",
            "reason": failed["reason"],
            "received": failed["received"],
        }
        assert failed["received"] > 0
        assert result["config"] is not None  # what could be answered is
        assert [p["blocks"] for p in answer.progress] == [1]  # the rest within the second
        assert _events(rig, "audit.report") == []


async def test_data_request_report_without_dex_port_is_refused(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        answer = await rig.backend.data_request(DEVICE, report=True, config=True)
        assert (answer.reply["ok"], answer.reply["code"]) == (False, "no_dex_port")
        assert answer.result is None
        config = await rig.backend.data_request(DEVICE, config=True)
        assert config.result is not None
        assert config.result["ok"] is True
        assert config.result["config"]["settings"]["dex"]["port"] is None
        assert _events(rig, "data.result") == [config.result]


async def test_check_status_idle_then_busy_during_a_locked_session(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker, level=1) as rig, _vmc_idling(rig):
        backend = rig.backend
        await backend.wait_for(lambda: backend.state[DEVICE]["mdb_link"] == "up", 10)
        assert await backend.check_status(DEVICE) == {"status": "idle", "reasons": []}
        txn_id = await backend.lock(DEVICE, "alice")
        await backend.wait_for(lambda: backend.state[DEVICE]["reader"] == "session_idle", 10)
        assert await backend.check_status(DEVICE) == {
            "status": "busy",
            "reasons": [
                {"reason": "session", "reader": "session_idle"},
                {"reason": "txn", "txn_id": txn_id, "state": "locked"},
            ],
        }
        assert (await backend.command(DEVICE, "unlock", txn_id=txn_id))["ok"]
        await backend.wait_for(
            lambda: (
                backend.state[DEVICE]["txn"] is None
                and backend.state[DEVICE]["reader"] == "enabled"
            ),
            10,
        )
        assert await backend.check_status(DEVICE) == {"status": "idle", "reasons": []}


async def test_check_status_busy_during_a_dex_read_and_a_hang_up_fails_it(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The VMC never opens the data session: the read waits (up to 10 s); the cable pulled
    meanwhile ends it at once, at step ``transfer``."""
    stalls = SourceFaults(silent_in=Stage.DATA_TRANSFER)
    async with machine_with_dex(tmp_path, broker, read_at_start=False, faults=stalls) as (
        rig,
        line,
    ):
        reply = await rig.backend.command(DEVICE, "data.request", report=True, request_id="r-3")
        assert reply["ok"]
        reading = await _reading(rig)
        assert (reading["received"], reading["blocks"]) == (0, 0)
        await line.hang_up()
        (result,) = await rig.backend.wait_for(lambda: rig.backend.data_results("r-3") or None, 15)
        assert result["read_id"] == reading["read_id"]
        assert (result["ok"], result["error"]["step"]) == (False, "transfer")
        status = await rig.backend.check_status(DEVICE)
        assert "dex_read" not in [r["reason"] for r in status["reasons"]]


async def test_data_request_pending_at_a_kill_is_answered_once_after_restart(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    stalls = SourceFaults(silent_in=Stage.DATA_TRANSFER)
    async with machine_with_dex(tmp_path, broker, read_at_start=False, faults=stalls) as (
        rig,
        _line,
    ):
        backend = rig.backend
        reply = await backend.command(DEVICE, "data.request", report=True, request_id="r-9")
        assert reply["ok"]
        await _reading(rig)
        rig.daemon.kill()
        assert rig.daemon.proc is not None
        await rig.daemon.proc.wait()
        await rig.restart_daemon()
        (result,) = await backend.wait_for(lambda: backend.data_results("r-9") or None, 15)
        assert (result["ok"], result["read_id"], result["error"]) == (
            False,
            None,
            {"step": "restart", "reason": "vmcd restarted before the read finished", "received": 0},
        )
        # Once: a status check after the restart's events, and still one result.
        await backend.check_status(DEVICE)
        assert [e["request_id"] for e in _events(rig, "data.result")] == ["r-9"]


async def test_data_request_vmctl_dex_read_goes_through_vmcd_and_the_cloud_joins(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with _slow_machine(tmp_path, broker) as (rig, line):
        out_file = tmp_path / "tech.dex"
        technician = asyncio.create_task(
            vmctl(
                "dex",
                "read",
                "--state-dir",
                str(rig.daemon.state_dir),
                "--out",
                str(out_file),
                "--json",
            )
        )
        reading = await _reading(rig)
        answer = await rig.backend.data_request(DEVICE, report=True, request_id="cloud-1")
        code, out, err = await technician
        assert code == 0, err
        assert answer.reply["result"]["read_id"] == reading["read_id"]  # joined the vmctl read
        assert answer.result is not None
        assert answer.result["read_id"] == reading["read_id"]
        (report,) = _events(rig, "audit.report")
        assert (report["read_id"], report["trigger"]) == (reading["read_id"], "local")
        assert out_file.read_bytes() == audit_from_counters(rig.vmc.sales)
        assert json.loads(out)["crc"] == "ok"
        assert f"saved {report['size']} bytes to {out_file}" in err
        assert len(line.source.results) == 1  # the port was vmcd's alone
        assert [e["request_id"] for e in _events(rig, "data.result")] == ["cloud-1"]
        assert len(events(rig.daemon, "local_op")) == 1


async def test_data_request_vmctl_dex_read_reads_itself_when_vmcd_has_no_dex_port(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    dex = PtyPair()
    source = DexSource(dex.master.fileno(), AUDIT)
    serving = asyncio.create_task(source.serve(reads=1))
    try:
        async with local_machine(state) as (daemon, _vmc):
            out_file = tmp_path / "read.dex"
            code, _, err = await vmctl(
                "dex", "read", "--port", dex.device_url, "--state-dir", str(state), "--out",
                str(out_file),
            )  # fmt: skip
            assert code == 0, err
            assert out_file.read_bytes() == AUDIT
            await wait_for(lambda: events(daemon, "data_request_refused"), 10, "vmcd's refusal")
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        dex.close()
