"""vmcd's wall clock steps a day while a lock is open (through the test offset of
:mod:`vmc.clock`, the host's clock untouched): the lock's deadline holds in elapsed time, the
transaction's events are dated in its own timeline, and the step is taken when it is over."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, machine
from tests.waiting import wait_for
from vmc.clock import OFFSET_ENV

DAY_S = 86400.0
SLACK_S = 60.0
"""Far more than a vend takes here, far less than the day the clock stepped."""


def _events_of(events: list[dict[str, object]], txn_id: str) -> list[dict[str, object]]:
    return [e for e in events if e.get("txn_id") == txn_id]


async def test_clock_forward_day_during_a_lock_vends_and_dates_sanely(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    offset = tmp_path / "clock-offset"
    offset.write_text("0")
    async with machine(tmp_path, broker, env={OFFSET_ENV: str(offset)}) as rig:
        reply = await rig.backend.command(DEVICE, "lock", ref="alice")
        assert reply["ok"]
        txn_id, locked_at = reply["result"]["txn_id"], float(reply["at"])
        offset.write_text(str(DAY_S))
        await asyncio.sleep(0.5)  # five ticks of vmcd see the stepped clock with the lock open
        outcome = await rig.customers.run("purchase", 1)
        assert outcome.ok, outcome
        entry = await rig.backend.wait_done(txn_id)
        assert entry.result == "success"
        stamps = [float(e["at"]) for e in _events_of(rig.backend.event_log, txn_id)]  # type: ignore[arg-type]
        assert len(stamps) == 2  # txn.request, txn.vend
        assert locked_at <= stamps[0] <= stamps[1] < locked_at + SLACK_S
        # Nothing open now: the next reply is dated by the stepped clock, and logged once.
        after = await rig.backend.command(DEVICE, "stock.query", expires=time.time() + DAY_S + 30)
        assert float(after["at"]) > time.time() + DAY_S - SLACK_S
        # A command whose expires the backend set by its own (unstepped) clock is expired now.
        stale = await rig.backend.command(DEVICE, "lock", ref="alice")
        assert stale["code"] == "expired"
        assert rig.daemon.log_path.read_text().count('"clock_step"') == 1


async def test_clock_backward_day_during_a_lock_expires_it_on_time(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    offset = tmp_path / "clock-offset"
    offset.write_text("0")
    async with machine(tmp_path, broker, env={OFFSET_ENV: str(offset)}) as rig:
        reply = await rig.backend.command(DEVICE, "lock", ref="alice", timeout_s=2)
        assert reply["ok"]
        txn_id, locked_at = reply["result"]["txn_id"], float(reply["at"])
        offset.write_text(str(-DAY_S))
        status = await wait_for(
            lambda: next(
                (e for e in _events_of(rig.backend.event_log, txn_id) if e["type"] == "txn.status"),
                None,
            ),
            15,
            "the lock's txn.status (it would take a day with the wall clock)",
        )
        assert (status["state"], status["reason"]) == ("expired", "lock_timeout")
        lasted = float(status["at"]) - locked_at
        assert 2.0 <= lasted < SLACK_S  # elapsed time, never negative, never a day
