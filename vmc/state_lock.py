"""``<state_dir>/vmcd.lock``: who may write the journal's stock right now.

vmcd holds an exclusive ``flock`` on it for its whole life, so a second vmcd on the same state
directory is refused, and ``vmctl`` learns whether vmcd runs by trying it (see
:mod:`vmc.services.local_ops`). The kernel drops the lock when its holder exits, however it
exits (``kill -9`` and power cuts included): a stale lock file is never in the way.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from protocols.errors import VmcError

LOCK_NAME = "vmcd.lock"
POLL_S = 0.05


class StateDirBusyError(VmcError):
    """Another process holds the state directory's lock."""


class StateLock:
    """A held lock; released by :meth:`release` or when the process ends."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor drops the flock

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(state_dir: Path) -> StateLock | None:
    """The lock if nobody holds it now, else None. Read-only is enough for ``flock``, so a
    lock file another user created is no obstacle."""
    fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return StateLock(fd)


def hold(state_dir: Path, wait_s: float) -> StateLock:
    """The lock, waiting up to ``wait_s`` for it (a vmctl applying an operation holds it for a
    moment); :class:`StateDirBusyError` when it stays held (another vmcd)."""
    deadline = time.monotonic() + wait_s
    while (lock := try_lock(state_dir)) is None:
        if time.monotonic() >= deadline:
            raise StateDirBusyError(
                f"another vmcd runs on state directory {state_dir} ({LOCK_NAME} is held);"
                " stop it first"
            )
        time.sleep(POLL_S)
    return lock
