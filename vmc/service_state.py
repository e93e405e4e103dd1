"""Seed 003's operating state, service flags and last service, as rules (sans-I/O).

Seed 003 describes a machine by an operating state (unknown, operating, out of service, no
connection) and service flags (``low_change``, ``need_loading``, ``no_recent_sales``); its
timestamps include ``last_service``. The rules that decide them from what vmcd knows live
here, with no clock read (every call is given the time) and nothing stored: the service
monitor (:mod:`vmc.services.service_monitor`) feeds them and keeps in the journal what must
survive a restart. ``need_loading`` is the stock's (:mod:`vmc.stock`).

Operating state, judged on every look (:meth:`OperatingRule.observe`):

- ``no_connection``: the MDB link is down (no POLL from the VMC for 5 s: VMC off, cable
  pulled, port missing), once the link was seen up since vmcd started or vmcd has watched the
  bus that long without a POLL;
- ``unknown``: before that, i.e. in the first seconds after vmcd started;
- ``out_of_service``: the link is up but the VMC has kept the reader inactive or disabled
  (not enabled, not in a session) for ``out_of_service_after`` seconds without a break. A
  link that drops starts the count again: a VMC that comes back resets the reader anyway;
- ``operating``: the link is up and the reader is enabled or in a session, or not for long.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from zoneinfo import ZoneInfo

from protocols.evadts.deltas import AuditDelta
from protocols.evadts.records import Event
from protocols.mdb.events import State


class OperatingState(StrEnum):
    UNKNOWN = "unknown"
    OPERATING = "operating"
    OUT_OF_SERVICE = "out_of_service"
    NO_CONNECTION = "no_connection"


IN_SERVICE = frozenset(
    {State.ENABLED, State.SESSION_IDLE, State.VEND, State.REVALUE, State.NEGATIVE_VEND}
)
"""Reader states in which the VMC lets customers pay with the reader."""


@dataclass(slots=True)
class OperatingRule:
    """The operating state from a sequence of looks at the link and the reader.

    ``started`` and every ``now`` are on one monotonic clock, in seconds.
    """

    out_of_service_after: float
    started: float
    link_timeout: float
    _link_seen: bool = False
    _disabled_since: float | None = None

    def observe(self, now: float, *, link_up: bool, reader: State) -> OperatingState:
        if not link_up:
            self._disabled_since = None
            if self._link_seen or now - self.started >= self.link_timeout:
                return OperatingState.NO_CONNECTION
            return OperatingState.UNKNOWN
        self._link_seen = True
        if reader in IN_SERVICE:
            self._disabled_since = None
            return OperatingState.OPERATING
        if self._disabled_since is None:
            self._disabled_since = now
        if now - self._disabled_since >= self.out_of_service_after:
            return OperatingState.OUT_OF_SERVICE
        return OperatingState.OPERATING


@dataclass(frozen=True, slots=True)
class TubeContents:
    """The coin changer's tubes as an audit counted them: CA1501, in 10**-``decimals`` units."""

    value: int
    decimals: int


def low_change(tubes: TubeContents | None, below: int | None, decimals: int) -> bool | None:
    """Whether the tubes hold less than ``below`` (in 10**-``decimals`` units); None: unknown.

    Unknown when no threshold is configured or the last valid audit counted no tubes. The
    audit's decimals (ID401) may differ from the contract's: both sides are scaled, exactly.
    """
    if tubes is None or below is None:
        return None
    ours, theirs = int(10**decimals), int(10**tubes.decimals)
    return tubes.value * ours < below * theirs


def no_recent_sales(last_sale: float | None, since: float, window_s: float, now: float) -> bool:
    """No paid sale in the last ``window_s`` seconds.

    Before any sale the window counts from ``since``: when vmcd first ran on this journal, so
    a new machine is not flagged on its first day, and one that never sells is, a window later.
    """
    reference = since if last_sale is None else last_sale
    return now - reference >= window_s


DOOR_CODES = frozenset({"EGS"})
"""EVA-DTS event codes of a door opening (App. C: EGS, door open)."""


def door_opened_at(change: AuditDelta, read_at: float, zone: ZoneInfo) -> float | None:
    """When an audit last saw the machine's door open; None when it shows no door event.

    Each new EA1 door entry counts at its own date and time, read in the machine's time zone
    and never later than the read (a VMC clock running ahead); an entry whose date or time
    cannot be read, or a grown EA2 door counter without any new entry, counts at the read.
    """
    times = [
        min(read_at, when) if (when := event_time(e, zone)) is not None else read_at
        for e in change.new_events
        if e.code in DOOR_CODES
    ]
    if not times and any(i.code in DOOR_CODES for i in change.event_increases):
        times.append(read_at)
    return max(times, default=None)


def event_time(event: Event, zone: ZoneInfo) -> float | None:
    """An EA1 entry's date (``YYMMDD`` or ``YYYYMMDD``) and time (``HHMM`` or ``HHMMSS``)."""
    date, clock = (event.date or "").strip(), (event.time or "").strip()
    if not (date.isascii() and date.isdigit() and clock.isascii() and clock.isdigit()):
        return None
    if len(date) == 6:
        date = "20" + date
    formats = {4: "%H%M", 6: "%H%M%S"}
    if len(date) != 8 or len(clock) not in formats:
        return None
    try:
        local = dt.datetime.strptime(date + clock, "%Y%m%d" + formats[len(clock)])
    except ValueError:
        return None
    return local.replace(tzinfo=zone).timestamp()


def latest(*times: float | None) -> float | None:
    """The latest of the times that are known."""
    return max((t for t in times if t is not None), default=None)
