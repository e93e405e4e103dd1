"""A size-limited tmpfs for the disk-full tests, and a filler that takes all of its room."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "4m"
CHUNK = 64 << 10


@contextlib.contextmanager
def mounted(mount_point: Path, size: str = SIZE) -> Iterator[Path]:
    """A tmpfs of ``size`` on ``mount_point`` while the block runs; the test is skipped, with
    the reason, where mounting is not permitted (it needs root)."""
    mount_point.mkdir(exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"disk_full needs to mount a tmpfs (as root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(directory: Path) -> Path:
    """A filler file written until the filesystem has not one more byte; its path."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (CHUNK, 512):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return filler
