"""vmcd's journal checkpoints: never inside a commit, always by :meth:`Journal.checkpoint`,
which also starts the WAL over so that no commit of vmcd's has to (and fsync its header)."""

from __future__ import annotations

import threading
from pathlib import Path

from vmc.journal import Journal, NewMessage

PAYLOAD = b"x" * 3000
COMMITS = 600  # about 1,200 WAL pages: past SQLite's automatic checkpoint at 1,000


def _fill(journal: Journal) -> None:
    for i in range(COMMITS):
        message = NewMessage(f"m{i}", "t", lambda _seq: PAYLOAD)
        journal.commit([], [message], durable=False)


def test_commits_leave_the_wal_to_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    journal.take_over_checkpoints()
    empty = path.stat().st_size
    _fill(journal)
    assert path.stat().st_size == empty  # no commit copied the WAL back
    worker = threading.Thread(target=journal.checkpoint)  # as vmcd runs it: off the loop
    worker.start()
    worker.join()
    assert path.stat().st_size > COMMITS * len(PAYLOAD)
    assert journal.outbox_size() == COMMITS
    journal.close()


def test_without_taking_over_sqlite_checkpoints_in_a_commit(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    empty = path.stat().st_size
    _fill(journal)
    assert path.stat().st_size > empty
    journal.close()


def _wal_salts(path: Path) -> bytes:
    """The WAL header's salts: new ones each time SQLite starts the WAL over."""
    with open(f"{path}-wal", "rb") as wal:
        return wal.read(24)[16:24]


def test_the_checkpoint_starts_the_wal_over_not_the_next_commit(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    journal.take_over_checkpoints()
    _fill(journal)
    before = _wal_salts(path)
    journal.checkpoint()
    started_over = _wal_salts(path)
    assert started_over != before
    journal.commit([], [NewMessage("after", "t", lambda _seq: PAYLOAD)], durable=False)
    assert _wal_salts(path) == started_over  # the commit went on in the WAL as it was
    journal.close()


def test_an_idle_journal_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    journal.take_over_checkpoints()
    _fill(journal)
    journal.checkpoint()
    wal = Path(f"{path}-wal").read_bytes()
    journal.checkpoint()  # nothing committed since: no checkpoint, no commit of its own
    assert Path(f"{path}-wal").read_bytes() == wal
    assert journal.outbox_size() == COMMITS
    journal.close()
