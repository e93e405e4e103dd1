"""vmcd without a cloud prunes its journal too: the local policy's book grows with every vend."""

from __future__ import annotations

import json
import time
from pathlib import Path

from drivers.pty import PtyPair
from sim.daemon_proc import DaemonProcess
from tests.waiting import wait_for
from vmc.journal import Journal, JournalRecord


def _pruned(log: Path) -> dict[str, int] | None:
    for line in log.read_text(errors="replace").splitlines():
        if '"journal_pruned"' in line:
            event: dict[str, int] = json.loads(line)
            return event
    return None


async def test_local_vmcd_prunes_its_book_past_the_retention(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    old = Journal(path, clock=lambda: time.time() - 100 * 86400)
    old.append(JournalRecord("cash_sale", None, 1, 150))
    old.close()
    recent = Journal(path)
    recent.append(JournalRecord("cash_sale", None, 2, 120))
    recent.close()
    pair = PtyPair()
    daemon = DaemonProcess(pair, tmp_path, level=3)  # no --mqtt: the local policy decides
    await daemon.start()
    try:
        pruned = await wait_for(lambda: _pruned(daemon.log_path), 20, "journal_pruned")
    finally:
        await daemon.stop()
        pair.close()
    assert pruned["bus_events"] == 1
    journal = Journal(path)
    assert [r.item for r in journal.records()] == [2]
    journal.close()
