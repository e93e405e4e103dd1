"""The retained state's operating state, service flags and ``last_service``: the glue.

Feeds the rules of :mod:`vmc.service_state` with the MDB link, the reader state, the stock and
the journal. What must survive a restart is in the journal's ``state`` table, as JSON:

- ``service.since``: when vmcd first ran on this journal (``no_recent_sales`` before any sale),
  written once;
- ``service.change_tubes``: the last valid audit's coin tube contents (``null`` when it had
  none) and ``service.last_door``: the latest door opening an audit showed. The reporter
  commits both with the audit and the baseline they come from (:func:`audit_state`).

The operating state and ``no_recent_sales`` change with time alone. :meth:`ServiceMonitor.tick`
(the daemon's ticker, every 0.1 s) looks at them, from memory only, and asks for a new state
publish when one changed; every other change comes with a commit that asks for one itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from protocols.evadts import AuditDelta, tube_contents
from protocols.evadts.records import Audit
from protocols.mdb.events import State
from vmc.config import ServiceConfig
from vmc.journal import Journal
from vmc.service_state import (
    OperatingRule,
    OperatingState,
    TubeContents,
    door_opened_at,
    latest,
    low_change,
    no_recent_sales,
)
from vmc.services.bus import MDB_SILENT_S

log = structlog.get_logger("vmc.service")

SINCE = "service.since"
CHANGE_TUBES = "service.change_tubes"
LAST_DOOR = "service.last_door"
HOUR_S = 3600.0


def audit_state(
    journal: Journal, audit: Audit, change: AuditDelta | None, read_at: float, zone: ZoneInfo
) -> dict[str, bytes]:
    """What a valid audit adds to the reporter's commit: its coin tube contents, or that it
    has none, and, when it shows the door opened, the latest door opening known."""
    value = tube_contents(audit.cash)
    tubes = None if value is None else {"value": value, "decimals": audit.currency.decimals}
    out = {CHANGE_TUBES: _dump(tubes)}
    door = None if change is None else door_opened_at(change, read_at, zone)
    if door is not None:
        out[LAST_DOOR] = _dump(latest(door, _load(journal, LAST_DOOR)))
    return out


class ServiceMonitor:
    def __init__(
        self,
        config: ServiceConfig,
        journal: Journal,
        *,
        link_up: Callable[[], bool],
        reader: Callable[[], State],
        stock_service: Callable[[], float | None],
        decimals: int,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_state: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.link_up = link_up
        self.reader = reader
        self.stock_service = stock_service
        self.decimals = decimals
        self.clock = clock
        self.monotonic = monotonic
        self.on_state = on_state
        since = _load(journal, SINCE)
        if since is None:
            since = clock()
            journal.commit([], [], state={SINCE: _dump(since)}, durable=False)
        self.since = float(since)
        self.rule = OperatingRule(config.out_of_service_after_s, monotonic(), MDB_SILENT_S)
        self._last_sale = journal.last_paid_sale()
        self._looked: tuple[OperatingState, bool] | None = None

    def state(self) -> dict[str, Any]:
        """The retained ``state``'s operating state, service flags and ``last_service``."""
        self._last_sale = self.journal.last_paid_sale()
        operating, no_sales = self._timed()
        stored = _load(self.journal, CHANGE_TUBES)
        tubes = None if stored is None else TubeContents(stored["value"], stored["decimals"])
        return {
            "operating_state": operating.value,
            "low_change": low_change(tubes, self.config.low_change_below, self.decimals),
            "change_tubes": stored,
            "no_recent_sales": no_sales,
            "last_service": latest(self.stock_service(), _load(self.journal, LAST_DOOR)),
        }

    def tick(self) -> None:
        """Ask for a publish when the operating state or ``no_recent_sales`` changed.

        The last sale is the one the last publish read (every sale asks for a publish): while
        the broker is away it may be stale, which costs at most a needless publish.
        """
        looked = self._timed()
        if looked == self._looked:
            return
        operating, no_sales = looked
        log.info("service_state", operating_state=operating.value, no_recent_sales=no_sales)
        self._looked = looked
        self.on_state()

    def _timed(self) -> tuple[OperatingState, bool]:
        link_up, reader = self.link_up(), self.reader()
        operating = self.rule.observe(self.monotonic(), link_up=link_up, reader=reader)
        window_s = self.config.no_sales_window_h * HOUR_S
        return operating, no_recent_sales(self._last_sale, self.since, window_s, self.clock())


def _dump(value: object) -> bytes:
    return json.dumps(value).encode()


def _load(journal: Journal, key: str) -> Any:
    stored = journal.state(key)
    return None if stored is None else json.loads(stored)
