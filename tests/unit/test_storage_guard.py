"""The storage guard's rules, with the free space given: when it turns full, when it recovers."""

from __future__ import annotations

from pathlib import Path

from vmc.storage import LOW_BYTES, RESERVE_BYTES, StorageGuard


class _Disk:
    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, _directory: Path) -> int:
        return self.free


def test_disk_full_guard_turns_full_under_the_low_mark_and_back_with_room(tmp_path: Path) -> None:
    disk = _Disk(10 * RESERVE_BYTES)
    changes: list[bool] = []
    guard = StorageGuard(tmp_path, free=disk, clock=lambda: 1000.0)
    guard.on_change = lambda: changes.append(guard.full)
    guard.start()
    assert guard.reserve.stat().st_size == RESERVE_BYTES
    assert guard.check()
    disk.free = LOW_BYTES - 1
    assert not guard.check()
    assert (guard.since, guard.reserve.exists()) == (1000.0, False)
    disk.free = RESERVE_BYTES + LOW_BYTES  # the reserve given back is not room enough yet
    assert not guard.check()
    disk.free = RESERVE_BYTES + 2 * LOW_BYTES
    assert guard.check()
    assert (guard.since, guard.reserve.exists()) == (None, True)
    assert changes == [True, False]
    assert guard.view()["state"] == "ok"


def test_disk_full_guard_write_failed_gives_the_reserve_once(tmp_path: Path) -> None:
    guard = StorageGuard(tmp_path, free=_Disk(10 * RESERVE_BYTES))
    guard.start()
    assert guard.write_failed()  # room made: worth one more try
    assert guard.full
    assert not guard.write_failed()  # nothing more to give
