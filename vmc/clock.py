"""The wall clock the transaction engine reads: steady while money is in motion.

The engine measures its deadlines (a lock's, an approval's, a voucher's) and stamps its events
with one ``now``. Read from ``time.time`` alone, a step of the wall clock (NTP correcting a
Pi that booted without a battery clock, an operator's ``date -s``) would expire an open lock at
once (+1 day) or keep it open a day longer (-1 day), and date its next event a day off.

:class:`SteadyClock` gives wall time that, **while a transaction, voucher, credit or test
vend is open** (``holding``), advances at the pace of the monotonic clock from the wall time it
last read: deadlines then hold to the second, durations are never negative and the steps of
one transaction are dated consistently. While nothing is open it returns the wall clock as it
is, so a step is taken between transactions, logged once as ``clock_step``.

``VMC_WALL_CLOCK_OFFSET_FILE`` (tests only): a file holding seconds to add to ``time.time``,
read on each call, so a test can step vmcd's wall clock without touching the host's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

log = structlog.get_logger("vmc.clock")

OFFSET_ENV = "VMC_WALL_CLOCK_OFFSET_FILE"
STEP_S = 2.0
"""A difference between the wall clock and the steady one above this is a step (logged)."""


class SteadyClock:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._anchor = (wall(), monotonic())
        self.holding: Callable[[], bool] = lambda: False
        """Whether something with a deadline is open (bound by vmcd to the engine)."""

    def __call__(self) -> float:
        wall_then, mono_then = self._anchor
        mono = self._monotonic()
        steady = wall_then + (mono - mono_then)
        if self.holding():
            return steady
        wall = self._wall()
        if abs(wall - steady) > STEP_S:
            log.warning("clock_step", by_s=round(wall - steady, 3))
        self._anchor = (wall, mono)
        return wall


def wall_clock(environ: Mapping[str, str] = os.environ) -> Callable[[], float]:
    """``time.time``, or with the test offset of :data:`OFFSET_ENV` added."""
    name = environ.get(OFFSET_ENV)
    if not name:
        return time.time
    path = Path(name)

    def offset_wall() -> float:
        try:
            return time.time() + float(path.read_text() or 0)
        except (OSError, ValueError):
            return time.time()

    return offset_wall
