"""The journal on a filesystem with no room left (a real tmpfs, filled): SQLite's SQLITE_FULL
becomes :class:`StorageFullError`, the write is rolled back whole, the storage guard's reserve
gives a failed write its second chance, and nothing committed before is lost or damaged."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from tests.small_fs import fill
from vmc.journal import JOURNAL_NAME, Journal, JournalRecord, StorageFullError
from vmc.storage import StorageGuard

COMMITTED = 40


def _sale(n: int) -> JournalRecord:
    return JournalRecord("cash_sale", None, n % 10, 100 + n, None, "x" * 200)


def _journal(directory: Path) -> tuple[Journal, StorageGuard]:
    journal = Journal(directory / JOURNAL_NAME)
    guard = StorageGuard(directory)
    journal.on_full = guard.write_failed
    guard.start()
    for n in range(COMMITTED):
        journal.append(_sale(n), durable=True)
    return journal, guard


def _integrity(directory: Path) -> str:
    with contextlib.closing(sqlite3.connect(directory / JOURNAL_NAME)) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def test_disk_full_write_gets_a_second_chance_in_the_reserve(small_fs: Path) -> None:
    journal, guard = _journal(small_fs)
    assert guard.reserve.exists()
    fill(small_fs)
    journal.append(_sale(COMMITTED), durable=True)  # SQLITE_FULL, reserve freed, retried: ok
    assert guard.full
    assert not guard.reserve.exists()
    assert len(journal.records()) == COMMITTED + 1
    assert not guard.check()  # still no room for the reserve: money stays refused
    journal.close()
    assert _integrity(small_fs) == "ok"


def test_disk_full_without_reserve_rolls_back_and_recovers(small_fs: Path) -> None:
    journal, guard = _journal(small_fs)
    filler = fill(small_fs)
    journal.append(_sale(COMMITTED), durable=True)  # spends the reserve
    with contextlib.suppress(StorageFullError):
        for n in range(COMMITTED + 1, COMMITTED + 10_000):
            journal.append(_sale(n), durable=True)
    with pytest.raises(StorageFullError):
        journal.append(_sale(-1), durable=True)
    kept = len(journal.records())
    assert kept > COMMITTED
    assert all(r.amount != 99 for r in journal.records())  # the refused one left no trace
    filler.unlink()
    assert guard.check()  # room again: the reserve is back, money is taken
    assert guard.reserve.exists()
    journal.append(_sale(COMMITTED + 20_000), durable=True)  # no transaction left hanging
    assert len(journal.records()) == kept + 1
    journal.close()
    assert _integrity(small_fs) == "ok"


def test_disk_full_at_start_opens_the_journal_in_the_reserve(small_fs: Path) -> None:
    """vmcd's order at start: the guard first (it gives the reserve back on a full
    filesystem), then the journal, whose WAL and shared-memory files need room to open."""
    journal, guard = _journal(small_fs)
    journal.close()
    assert guard.reserve.exists()  # left by the run before
    fill(small_fs)
    guard = StorageGuard(small_fs)
    guard.start()
    assert guard.full
    journal = Journal(small_fs / JOURNAL_NAME)
    assert len(journal.records()) == COMMITTED
    journal.append(_sale(COMMITTED), durable=True)  # what is open can still be finished
    journal.close()
    assert _integrity(small_fs) == "ok"
