"""The journal's filesystem fills up while vmcd runs: a size-limited tmpfs as the state
directory, a filler file written until ENOSPC. vmcd must refuse new money (``storage_full``),
say so in its status, keep serving the VMC, never corrupt the journal, and take money again by
itself once the filler is gone."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.small_fs import fill
from tests.waiting import wait_for
from vmc.control.client import ControlClient
from vmc.journal import JOURNAL_NAME


def _status(rig: Rig) -> dict[str, object]:
    with ControlClient(rig.daemon.state_dir / "vmcd.sock") as client:
        status = client.call("status", timeout=5)
    assert isinstance(status, dict)
    return status


def _journal_check(path: Path) -> tuple[str, list[tuple[str, str]], int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        txns = db.execute("SELECT txn_id, state FROM txns ORDER BY txn_id").fetchall()
        sales = db.execute("SELECT COUNT(*) FROM sales").fetchone()[0]
    return str(check), [(str(t), str(s)) for t, s in txns], int(sales)


async def _vend(rig: Rig) -> str:
    txn_id = await rig.backend.lock(DEVICE, "alice")
    outcome = await rig.customers.run("purchase", 1)
    assert outcome.ok, outcome
    entry = await rig.backend.wait_done(txn_id)
    assert entry.result == "success"
    return txn_id


async def test_disk_full_refuses_money_keeps_serving_and_resumes(
    tmp_path: Path, broker: MosquittoBroker, small_fs: Path
) -> None:
    state = small_fs / "state"
    async with machine(tmp_path, broker, state_dir=state) as rig:
        before = [await _vend(rig) for _ in range(2)]
        filler = fill(small_fs)
        assert os.statvfs(small_fs).f_bavail == 0

        # New money is refused, with a code the backend can switch on, and nothing is stored.
        refused = await rig.backend.command(DEVICE, "lock", ref="alice")
        assert (refused["ok"], refused["code"]) == (False, "storage_full")
        voucher = await rig.backend.command(DEVICE, "voucher", voucher_id="v1", value=100)
        assert voucher["code"] == "storage_full"
        state_seen = await rig.backend.wait_for(
            lambda: (rig.backend.state.get(DEVICE) or {}).get("storage") == "full", 5
        )
        assert state_seen
        status = _status(rig)
        assert "storage_full" in status["codes"]  # type: ignore[operator]
        assert status["storage"]["state"] == "full"  # type: ignore[index]

        # The bus process keeps answering the VMC: the reader is still enabled and polled.
        polls = status["bus"]["polls"]  # type: ignore[index]
        await wait_for(lambda: _status(rig)["bus"]["polls"] > polls, 5, "more polls")  # type: ignore[index]
        assert rig.daemon.proc is not None
        assert rig.daemon.proc.returncode is None

        # Room again: the next lock works, without a restart.
        filler.unlink()
        await rig.backend.wait_for(
            lambda: (rig.backend.state.get(DEVICE) or {}).get("storage") == "ok", 5
        )
        after = await _vend(rig)
        assert "storage_full" not in _status(rig)["codes"]  # type: ignore[operator]
    check, txns, sales = _journal_check(state / JOURNAL_NAME)
    assert check == "ok"
    assert dict(txns) == dict.fromkeys([*before, after], "vended")
    assert sales == 3
    log = (tmp_path / "vmcd.log").read_text()
    assert '"storage_full"' in log
    assert '"storage_space_back"' in log


async def test_disk_full_during_an_open_lock_refuses_its_paid(
    tmp_path: Path, broker: MosquittoBroker, small_fs: Path
) -> None:
    """The lock was taken with room; the disk fills before the customer selects. The
    selection's request is still journaled (in the reserve), the backend's ``paid`` is refused
    ``storage_full``, the VMC is denied when the approval deadline passes, and the
    transaction ends expired: no product, no charge."""
    state = small_fs / "state"
    async with machine(tmp_path, broker, state_dir=state) as rig:
        txn_id = await rig.backend.lock(DEVICE, "alice")
        fill(small_fs)
        await wait_for(lambda: _status(rig)["storage"]["state"] == "full", 5, "full")  # type: ignore[index]
        outcome = await rig.customers.run("purchase", 1)
        assert outcome.outcome == "denied", outcome
        entry = await rig.backend.wait_done(txn_id)
        assert entry.states[-1] == "expired"
        assert entry.charged == 0
        refusals = [r for r in rig.backend.replies.values() if r.get("code") == "storage_full"]
        assert len(refusals) == 1
    check, txns, sales = _journal_check(state / JOURNAL_NAME)
    assert (check, txns, sales) == ("ok", [(txn_id, "expired")], 0)
