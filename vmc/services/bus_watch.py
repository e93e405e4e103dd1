"""What the bus process has told the daemon, kept for ``vmctl status``.

The daemon hands every bus report to :meth:`BusWatch.observe` before the deciding service
sees it. It keeps the last heartbeat (when it came, so the age of the last POLL stays exact
between heartbeats), the reader's state and since when, and what the VMC said about itself
at set-up: its MDB level, display and the level-3 options it enabled. It only reads: the
deciding services keep their own view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.mdb import events as ev
from protocols.mdb.commands import Feature
from vmc.services import bus_messages as msg

IN_SESSION = frozenset(
    {ev.State.SESSION_IDLE, ev.State.VEND, ev.State.REVALUE, ev.State.NEGATIVE_VEND}
)


@dataclass(slots=True)
class BusWatch:
    monotonic: Callable[[], float] = time.monotonic
    heartbeat: msg.Heartbeat | None = None
    heartbeat_at: float | None = None
    reader: ev.State | None = None
    reader_since: float | None = None
    configured: ev.Configured | None = None
    features: int | None = None
    prices: ev.PricesSet | None = None
    realtime: bool | None = None
    protocol_violations: int = 0
    _started: float = field(init=False)

    def __post_init__(self) -> None:
        self._started = self.monotonic()

    def observe(self, report: object) -> None:
        now = self.monotonic()
        match report:
            case msg.Heartbeat(state=state):
                self.heartbeat, self.heartbeat_at = report, now
                reader = ev.State.__members__.get(state)
                if reader is not None:
                    self._reader(reader, now)
            case ev.StateChanged(new=new):
                self._reader(new, now)
            case ev.Configured():
                self.configured = report
            case ev.FeaturesEnabled(features=features):
                self.features = features
            case ev.PricesSet():
                self.prices = report
            case ev.ReaderReset():
                self.features = None  # the VMC sets up the reader again
            case msg.Ready(realtime=realtime):
                self.realtime = realtime
            case ev.ProtocolViolation():
                self.protocol_violations += 1

    def _reader(self, state: ev.State, now: float) -> None:
        if state is not self.reader:
            self.reader, self.reader_since = state, now

    def last_poll_age(self) -> float | None:
        """Seconds since the VMC's last POLL, as of now; None if it never polled."""
        beat = self.heartbeat
        if beat is None or beat.last_poll_age is None or self.heartbeat_at is None:
            return None
        return beat.last_poll_age + (self.monotonic() - self.heartbeat_at)

    def reader_for(self) -> float | None:
        """Seconds the reader has been in its present state."""
        return None if self.reader_since is None else self.monotonic() - self.reader_since

    def options(self) -> list[str] | None:
        """The level-3 options the VMC enabled, by name (None: it enabled none yet)."""
        if self.features is None:
            return None
        return [f.name.lower() for f in Feature if self.features & f]
