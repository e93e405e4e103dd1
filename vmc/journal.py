"""The daemon's durable record of what happened on the bus (SQLite in WAL mode).

Every vend outcome is written and fsynced before the daemon acts on it further; the
remote-vend transaction journal and the cloud outbox grow from this file.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS bus_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    vend_id INTEGER,
    item INTEGER,
    amount INTEGER,
    vend_type TEXT,
    detail TEXT
);
"""


class VendType(Enum):
    """Seed 003 keeps these apart: only paid vends are money the backend collected."""

    PAID = "paid"
    FREE = "free"
    TEST = "test"
    CASH = "cash"


@dataclass(frozen=True, slots=True)
class JournalRecord:
    kind: str
    vend_id: int | None = None
    item: int | None = None
    amount: int | None = None
    vend_type: VendType | None = None
    detail: str | None = None


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def append(self, record: JournalRecord, *, durable: bool = False) -> int:
        """Write one record; ``durable`` ones are fsynced (FULL sync, checkpoint-safe)."""
        self._db.execute("PRAGMA synchronous=" + ("FULL" if durable else "NORMAL"))
        cur = self._db.execute(
            "INSERT INTO bus_events (at, kind, vend_id, item, amount, vend_type, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                record.kind,
                record.vend_id,
                record.item,
                record.amount,
                None if record.vend_type is None else record.vend_type.value,
                record.detail,
            ),
        )
        return int(cur.lastrowid or 0)

    def records(self, kind: str | None = None) -> list[JournalRecord]:
        sql = "SELECT kind, vend_id, item, amount, vend_type, detail FROM bus_events"
        args: tuple[str, ...] = ()
        if kind is not None:
            sql += " WHERE kind = ?"
            args = (kind,)
        rows = self._db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            JournalRecord(k, v, i, a, None if t is None else VendType(t), d)
            for k, v, i, a, t, d in rows
        ]

    def close(self) -> None:
        self._db.close()
