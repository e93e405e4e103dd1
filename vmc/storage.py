"""Room on the state directory's filesystem: a reserve vmcd keeps, and the full state.

SQLite answers a write it has no room for with ``SQLITE_FULL`` and rolls it back: the journal
stays whole, but nothing new can be recorded, not even the refusal of a lock. So vmcd holds a
**reserve** file (:data:`RESERVE_NAME`, :data:`RESERVE_BYTES`) in the state directory. When the
filesystem runs low (free space under :data:`LOW_BYTES`, or a write failed for want of room)
the guard turns **full**: it deletes the reserve, and the journal retries the failed write in
the room it gave back. While full, vmcd refuses every new movement of money (``storage_full``)
and spends the reserve only on finishing what is open, refusals, and the products the VMC
reports sold. Once there is room for the reserve and the low mark again, the guard makes the
reserve anew and vmcd takes money again, without a restart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("vmc.storage")

RESERVE_NAME = "storage.reserve"
RESERVE_BYTES = 1 << 20
"""Room for some dozens of commits (a WAL commit appends its pages, 4 KiB each)."""
LOW_BYTES = 256 << 10
"""Free space under this (the reserve not counted) turns the guard full."""
STORAGE_FULL_HINT = (
    "the state directory's filesystem is full: free space there (old logs, audits, other"
    " files); vmcd takes money again by itself once there is room"
)


def free_bytes(directory: Path) -> int:
    """What an unprivileged writer may still use on ``directory``'s filesystem."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class StorageGuard:
    def __init__(
        self,
        directory: Path,
        *,
        free: Callable[[Path], int] = free_bytes,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.reserve = directory / RESERVE_NAME
        self._free = free
        self._clock = clock
        self.full = False
        self.since: float | None = None
        """When the guard last turned full (POSIX s); None while there is room."""
        self.on_change: Callable[[], None] = lambda: None

    def start(self) -> None:
        """At start: make the reserve (or find it), or start full if there is no room."""
        self.check()
        if not self.full and not self._make_reserve():
            self._turn_full("no_room_for_reserve")

    def check(self) -> bool:
        """Look at the free space now; whether vmcd may take money. Cheap (one statvfs)."""
        free = self._free(self.directory)
        if not self.full and free < LOW_BYTES:
            self._turn_full("low_space", free=free)
        elif self.full and free >= RESERVE_BYTES + 2 * LOW_BYTES and self._make_reserve():
            log.warning("storage_space_back", free=free)
            self.full, self.since = False, None
            self.on_change()
        return not self.full

    def write_failed(self) -> bool:
        """A journal write found no room: turn full; True if the reserve gave some back (so
        the write is worth one more try)."""
        had = self.reserve.exists()
        self._turn_full("write_failed")
        return had and not self.reserve.exists()

    def _turn_full(self, why: str, **fields: int) -> None:
        released = self._release()
        if not self.full:
            self.full, self.since = True, self._clock()
            log.error("storage_full", reason=why, reserve_released=released, **fields)
            self.on_change()

    def _release(self) -> bool:
        try:
            self.reserve.unlink()
        except FileNotFoundError:
            return False
        return True

    def _make_reserve(self) -> bool:
        """Allocate the reserve's blocks for real (a sparse file would give nothing back)."""
        if self.reserve.exists() and self.reserve.stat().st_blocks * 512 >= RESERVE_BYTES:
            return True
        try:
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("storage_reserve_failed", error=exc.strerror)
            self._release()
            return False
        return True

    def view(self) -> dict[str, object]:
        """For ``vmctl status`` and the cloud's ``state``."""
        return {
            "state": "full" if self.full else "ok",
            "since": self.since,
            "free_bytes": self._free(self.directory),
            "reserve": self.reserve.exists(),
        }
