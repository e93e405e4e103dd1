"""Raw audits on disk (the last N), and when the next scheduled read is due.

Raw files are what the machine sent, byte for byte, named by read time and id, so a field
technician can hand one to ``vmctl dex parse`` and support can replay the exact bytes.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path


class AuditStore:
    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        directory.mkdir(parents=True, exist_ok=True)

    def save(self, raw: bytes, read_id: str, at: float) -> Path:
        """Write one audit durably, then drop the oldest beyond ``keep``."""
        stamp = dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.directory / f"{stamp}-{read_id[:8]}.dex"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        for old in self.files()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.dex"))


def next_read(now: dt.datetime, schedule: tuple[str, ...]) -> dt.datetime | None:
    """The first scheduled ``HH:MM`` (in ``now``'s time zone) strictly after ``now``."""
    if not schedule:
        return None
    candidates = []
    for text in schedule:
        hour, minute = (int(part) for part in text.split(":"))
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if at <= now:
            at += dt.timedelta(days=1)
        candidates.append(at)
    return min(candidates)
