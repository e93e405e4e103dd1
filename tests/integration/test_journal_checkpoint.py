"""vmcd's journal checkpoints: never inside a commit, always by :meth:`Journal.checkpoint`."""

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
