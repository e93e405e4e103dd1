"""A ``txn.request`` is published before its commit is fsynced (docs/cloud-api.md 6.4).

A power cut may then lose the transaction from the journal after the backend got its request.
kill -9 alone cannot lose a commit that reached the kernel, so the test makes that loss itself:
it keeps a copy of the journal taken just before the customer selects (no commit after it is
fsynced: the request's, and the outbox's delete after its PUBACK), kills vmcd with SIGKILL once
the backend has the request, and puts the copy back before vmcd starts again: the journal a
power cut can leave.
The backend's ``paid`` for that transaction, sent while vmcd is down and again once it is back,
must never make the VMC dispense, must get a clear refusal, and the ``seq`` of the lost request
must not be given to a later event.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from protocols.mdb import commands as c
from sim.backend import Policy
from sim.broker import MosquittoBroker
from sim.scenarios import PRICES_MINOR
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.waiting import wait_for, wait_until

ITEM = 7
POLLS_AFTER = 50


def _journal(rig: Rig) -> Path:
    return rig.daemon.state_dir / "journal.sqlite3"


def _snapshot(journal: Path, copy: Path) -> None:
    """A consistent copy of the live journal (SQLite's backup: the WAL's commits included)."""
    with (
        contextlib.closing(sqlite3.connect(journal)) as src,
        contextlib.closing(sqlite3.connect(copy)) as dst,
    ):
        src.backup(dst)


def _put_back(copy: Path, journal: Path) -> None:
    """The journal as the copy has it: what is left when the commits after it were lost."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    copy.rename(journal)


def _requests(rig: Rig) -> list[dict[str, Any]]:
    return [e for e in rig.backend.event_log if e.get("type") == "txn.request"]


def _txn_known(journal: Path, txn_id: str) -> bool:
    with contextlib.closing(sqlite3.connect(journal)) as db:
        found = db.execute("SELECT 1 FROM txns WHERE txn_id = ?", (txn_id,)).fetchone()
    return found is not None


async def test_request_lost_by_a_power_cut_is_never_approved(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker, policy=Policy.SILENT) as rig:
        backend, vmc = rig.backend, rig.vmc
        assert await wait_until(lambda: rig.outbox_size() == 0)
        copy = tmp_path / "before-selection.sqlite3"
        _snapshot(_journal(rig), copy)

        price = PRICES_MINOR[0]
        assert (await vmc.vend_request(vmc.money(price), ITEM)).is_ack
        request = await wait_for(lambda: next(iter(_requests(rig)), None), 10, "txn.request")
        txn_id = str(request["txn_id"])
        rig.daemon.kill()  # the power goes: the request's commit was never fsynced
        assert rig.daemon.proc is not None
        await rig.daemon.proc.wait()
        await rig.daemon.stop()
        _put_back(copy, _journal(rig))
        paid = {"id": "paid-after-cut", "op": "paid", "txn_id": txn_id, "amount": price}
        await backend.send(DEVICE, dict(paid))  # lost: nobody subscribed (clean session)

        backend.state.pop(DEVICE, None)
        await rig.restart_daemon()
        await backend.wait_for(
            lambda: (backend.state.get(DEVICE) or {}).get("reader") == "enabled", 20
        )
        assert not _txn_known(_journal(rig), txn_id)
        # A new customer selects: that request gets a seq the lost one never had, and the
        # lost transaction's paid must not approve this vend either.
        assert (await vmc.vend_request(vmc.money(price), ITEM)).is_ack
        later = await wait_for(lambda: _requests(rig)[1:], 10, "the next txn.request")
        assert later[0]["txn_id"] != txn_id
        assert later[0]["seq"] > request["seq"]

        await backend.send(DEVICE, dict(paid))  # resent with the same id, as the contract says
        reply = await wait_for(lambda: backend.replies.get("paid-after-cut"), 20, "paid's reply")
        assert reply["ok"] is False
        assert reply["code"] == "no_such_txn"
        for _ in range(POLLS_AFTER):  # the VMC never hears an approval
            assert (await vmc.poll()).code != c.Resp.VEND_APPROVED
        assert not _txn_known(_journal(rig), txn_id)
        assert backend.books.entries[txn_id].result is None  # no txn.vend: nothing dispensed
