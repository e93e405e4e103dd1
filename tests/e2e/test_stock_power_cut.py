"""kill -9 vmcd while refills and planogram changes stream in: old or new stock, never a mix.

After every cut the journal must be whole: every applied stock command has its stored reply and
every stored reply its applied operation; each key's level is the ``after`` of its last history
row; the levels count exactly the keys of the stored planogram; and the restarted daemon
reports the stored planogram's version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import cbor2

from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine

PRODUCTS = [{"id": "bar"}, {"id": "chips"}, {"id": "nuts"}]


def _planogram(version: int) -> dict[str, Any]:
    """Selection 2 sells chips or nuts by the version's parity, so a change unloads it."""
    levels = {"capacity": 10, "par_level": 8, "alarm_level": 2}
    return {
        "version": version,
        "products": PRODUCTS,
        "selections": [
            {"number": 1, "product": "bar", "price": 150, **levels},
            {"number": 2, "product": "chips" if version % 2 else "nuts", "price": 200, **levels},
        ],
    }


def _applied(rig: Rig, prefix: str) -> int:
    """How many of the commands whose ids start with ``prefix`` the journal holds."""
    path = rig.daemon.state_dir / "journal.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        ops = [r[0] for r in db.execute("SELECT op_id FROM stock_ops")]
    return sum(op.startswith(prefix) for op in ops)


def _check_books(rig: Rig) -> int:
    """The journal's stock invariants; the stored planogram's version."""
    path = rig.daemon.state_dir / "journal.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        ops = {r[0] for r in db.execute("SELECT op_id FROM stock_ops")}
        replies = {r[0]: cbor2.loads(r[1]) for r in db.execute("SELECT id, reply FROM commands")}
        levels = dict(db.execute("SELECT key, level FROM stock_levels").fetchall())
        history = db.execute(
            "SELECT op_id, key, before, after FROM stock_history ORDER BY seq"
        ).fetchall()
        version, document = db.execute("SELECT version, document FROM planogram").fetchone()
    assert ops == set(replies)
    assert all(reply["ok"] for reply in replies.values())
    for op_id, reply in replies.items():
        assert reply["result"]["changed"] == sum(h[0] == op_id for h in history)
    last = {key: after for _, key, _, after in history}
    assert levels == {key: last.get(key, 0) for key in levels}
    numbers = {f"s:{s['number']}" for s in json.loads(document)["selections"]}
    assert set(levels) == numbers
    return int(version)


async def test_power_cut_during_refills_and_planogram_changes(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    rng = random.Random(8)
    async with machine(tmp_path, broker) as rig:
        version = 1
        cut_mid_stream = 0
        first = await rig.backend.command(DEVICE, "planogram.set", planogram=_planogram(version))
        assert first["ok"], first
        for run in range(6):
            for n in range(12):
                body: dict[str, Any]
                if n % 4 == 3:
                    version += 1
                    body = {"op": "planogram.set", "planogram": _planogram(version)}
                else:
                    body = {"op": "stock.refill", "lines": [{"selection": 1 + n % 2, "amount": 1}]}
                await rig.backend.send(DEVICE, {"id": f"op-{run}-{n}", **body})
            await asyncio.sleep(rng.uniform(0.0, 0.04))  # where the cut falls, not a wait
            rig.daemon.kill()
            assert rig.daemon.proc is not None
            await rig.daemon.proc.wait()
            await rig.daemon.stop()
            stored = _check_books(rig)
            cut_mid_stream += 0 < _applied(rig, f"op-{run}-") < 12
            rig.backend.state.pop(DEVICE, None)
            await rig.restart_daemon()
            await rig.backend.wait_for(
                lambda v=stored: (
                    (rig.backend.state.get(DEVICE) or {}).get("planogram_version") == v
                ),
                20,
            )
        _check_books(rig)
    # Measured here: 4 of 6 cuts land between the first and the last command of their batch.
    assert cut_mid_stream, "no cut fell while commands were being applied: the test proved nothing"
