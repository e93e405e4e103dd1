"""``vmctl mdb monitor|record``, ``vmctl test-vend`` and ``vmctl selftest`` against a real vmcd
on a pty, with the simulated VMC and a real Mosquitto: the live bus, a test vend on the
machine, and what vmc learned about it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from protocols.mdb.trace import Direction, parse_trace
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.e2e.console import VMCTL, vmctl
from tests.e2e.test_stock_flow import load_planogram
from tests.e2e.test_vmctl_socket import as_json, in_terminal, one_line


@contextlib.asynccontextmanager
async def polling(rig: Rig) -> AsyncIterator[None]:
    """The VMC keeps polling the reader, as a real one does between customers."""

    async def poll() -> None:
        while True:
            await rig.customers.idle()

    task = asyncio.create_task(poll())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_mdb_monitor_and_record_the_live_bus(tmp_path: Path, broker: MosquittoBroker) -> None:
    async with machine(tmp_path, broker) as rig, polling(rig):
        state = str(rig.daemon.state_dir)
        code, out, err = await vmctl(
            "mdb", "monitor", "--count", "5", "--json", "--state-dir", state
        )
        assert (code, err) == (0, ""), err
        frames = [json.loads(line) for line in out.splitlines()]
        assert len(frames) == 5
        assert {f["command"] for f in frames} == {"POLL"}
        assert all(f["command_hex"] == "1212" for f in frames), frames  # POLL and its checksum

        code, out, err = await vmctl("mdb", "monitor", "--count", "3", "--state-dir", state)
        assert (code, err) == (0, ""), err
        lines = out.splitlines()
        assert len(lines) == 3
        assert all("POLL" in line for line in lines)

        trace = tmp_path / "bus.trace"
        code, out, err = await vmctl(
            "mdb", "record", str(trace), "--count", "10", "--state-dir", state
        )
        assert (code, out) == (0, ""), err
        assert err == f"10 exchanges recorded to {trace}\n"
        recorded = parse_trace(trace.read_text())
        assert [line.direction for line in recorded[:2]] == [Direction.VMC, Direction.PER]
        assert sum(line.direction is Direction.VMC for line in recorded) == 10

        one_line(
            *await vmctl("mdb", "record", str(tmp_path / "no" / "such" / "dir" / "x.trace"),
                         "--count", "1", "--state-dir", state),
            2,
            "cannot write",
        )  # fmt: skip


async def test_selftest_shows_what_vmc_learned_about_the_machine(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig, polling(rig):
        state = str(rig.daemon.state_dir)
        profile = await as_json("selftest", "--state-dir", state)
        assert profile["mdb"]["vmc_level"] == 3
        code, out, err = await vmctl("selftest", "--state-dir", state)
        assert (code, err) == (0, ""), err
        assert out.startswith("What vmc learned about this machine")
        assert "remote vend" in out


async def test_test_vend_on_the_machine_is_booked_as_a_test_vend(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        await load_planogram(rig)
        state = str(rig.daemon.state_dir)
        asked = asyncio.create_task(
            vmctl("test-vend", "1", "--timeout", "20", "--json", "--state-dir", state)
        )
        await rig.customers.session_shown()  # the technician sees the session, selects item 1
        assert await rig.customers.select(item=1) == "vended"
        await rig.customers.end_session()
        code, out, err = await asyncio.wait_for(asked, 60)
        assert code == 0, err
        outcome = json.loads(out)
        assert (outcome["result"], outcome["selection"]) == ("vended", 1)

        def test_vends() -> list[dict[str, object]]:
            return [
                e
                for e in rig.backend.event_log
                if e["type"] == "txn.vend" and e.get("vend_type") == "test"
            ]

        (vend,) = await rig.backend.wait_for(lambda: test_vends() or None, 10)
        assert (vend["result"], vend["amount"], vend["selection"]) == ("success", 0, 1)
        assert rig.vmc.sales.selections[1].test_vends == 1

        # Nothing selected in time: said so, exit 1.
        code, out, err = await vmctl("test-vend", "2", "--timeout", "1", "--state-dir", state)
        assert code == 1, err
        assert out.startswith("Test vend of selection 2: not selected in time")
        code, out, err = await vmctl("test-vend", "70000", "--state-dir", state)
        assert (code, out) == (2, "")
        assert err.splitlines()[-1].endswith("SELECTION: 70000 is outside 0..65535")


async def test_human_output_of_the_field_commands_in_a_terminal(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """stock, txn, selftest and the live bus as a technician sees them in a real terminal."""
    async with machine(tmp_path, broker) as rig:
        await load_planogram(rig)
        txn_id = await rig.backend.lock(DEVICE, "alice")
        assert await rig.customers.purchase(item=1) == "vended"
        await rig.backend.wait_done(txn_id)
        state = ["--state-dir", str(rig.daemon.state_dir)]
        stock = await in_terminal([str(VMCTL), "stock", "show", *state])
        assert "SELECTION" in stock
        assert "Choco bar" in stock
        txns = await in_terminal([str(VMCTL), "txn", "list", *state])
        assert txn_id in txns
        assert "vended" in txns
        profile = await in_terminal([str(VMCTL), "selftest", *state])
        assert profile.startswith("What vmc learned about this machine")
        async with polling(rig):
            bus = await in_terminal([str(VMCTL), "mdb", "monitor", "--count", "3", *state])
        assert sum("POLL" in line for line in bus.splitlines()) == 3
