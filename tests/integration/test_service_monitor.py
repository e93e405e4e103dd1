"""The service monitor over a real journal: flags from audits and stock, kept across restarts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from protocols.evadts import make_audit, write
from protocols.evadts.records import Cash, Event, EventCounter
from protocols.mdb.events import State
from tests.samples import audit_bytes
from vmc.cloud.messages import VendType
from vmc.cloud.topics import Topics
from vmc.config import DexConfig, ServiceConfig
from vmc.journal import Journal, StockWrite
from vmc.planogram import Planogram
from vmc.sales import Payment, SaleRow
from vmc.services.audit_store import AuditStore
from vmc.services.reporter import ReadContext, Reporter
from vmc.services.service_monitor import ServiceMonitor
from vmc.stock import Adjust, ChangePlanogram, Operation, SlotKey

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3600.0


@dataclass
class Machine:
    """What the monitor looks at, set by the test: the link, the reader, the clocks."""

    journal: Journal
    now: float = 1_000_000.0
    ticks: float = 0.0
    link: bool = False
    reader: State = State.INACTIVE
    published: list[int] = field(default_factory=list)

    def monitor(self, **config: Any) -> ServiceMonitor:
        return ServiceMonitor(
            ServiceConfig(**config),
            self.journal,
            link_up=lambda: self.link,
            reader=lambda: self.reader,
            stock_service=lambda: self.journal.load_stock().last_service_at,
            decimals=2,
            clock=lambda: self.now,
            monotonic=lambda: self.ticks,
            on_state=lambda: self.published.append(1),
        )

    def reporter(self, tmp_path: Path) -> Reporter:
        store = AuditStore(tmp_path / "audits", 3)
        return Reporter(DexConfig(), self.journal, store, Topics("m1"), zone=BERLIN)


def _apply(journal: Journal, op: Operation) -> None:
    stock = journal.load_stock()
    applied = stock.apply(op)
    journal.commit([], [], stock=[StockWrite(op.op_id, op.at, stock, applied)], durable=True)


def _tubes_audit(value: str, *, decimals: int = 2) -> bytes:
    """An audit whose CA15 says ``value`` (an empty text: no CA15 at all)."""
    other = (("CA15", value, "1", "20", "30"),) if value else ()
    return write(make_audit(serial="S1", cash=Cash(other=other), decimals=decimals))


def test_low_change_from_the_last_valid_audits_tubes_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    machine = Machine(Journal(path))
    reporter = machine.reporter(tmp_path)
    monitor = machine.monitor(low_change_below=1000)
    assert monitor.state()["low_change"] is None  # no audit yet: unknown
    reporter.process(_tubes_audit("950"), ReadContext("r1", machine.now, "test"))
    state = monitor.state()
    assert (state["low_change"], state["change_tubes"]) == (True, {"value": 950, "decimals": 2})
    # An audit of 0 decimals: 12 units are 12.00, not under 10.00.
    reporter.process(_tubes_audit("12", decimals=0), ReadContext("r2", machine.now, "test"))
    assert monitor.state()["low_change"] is False
    # An invalid (incomplete) read does not count; a valid one without CA15 makes it unknown.
    truncated = _tubes_audit("1").split(b"G85")[0]
    reporter.process(truncated, ReadContext("r3", machine.now, "test"))
    assert monitor.state()["change_tubes"] == {"value": 12, "decimals": 0}
    reporter.process(_tubes_audit(""), ReadContext("r4", machine.now, "test"))
    assert (monitor.state()["low_change"], monitor.state()["change_tubes"]) == (None, None)
    reporter.process(_tubes_audit("400"), ReadContext("r5", machine.now, "test"))
    machine.journal.close()

    again = Machine(Journal(path))
    assert again.monitor(low_change_below=1000).state()["low_change"] is True
    assert again.monitor().state()["low_change"] is None  # no threshold: not judged
    again.journal.close()


def test_last_service_is_the_later_of_a_stock_visit_and_a_door_opening(tmp_path: Path) -> None:
    machine = Machine(Journal(tmp_path / "journal.sqlite3"))
    journal = machine.journal
    monitor = machine.monitor()
    reporter = machine.reporter(tmp_path)
    assert monitor.state()["last_service"] is None
    planogram = Planogram.from_mapping(
        {
            "version": 1,
            "products": [{"id": "bar"}],
            "selections": [
                {
                    "number": 1,
                    "product": "bar",
                    "price": 1,
                    "capacity": 9,
                    "par_level": 5,
                    "alarm_level": 1,
                }
            ],
        }
    )
    _apply(journal, ChangePlanogram("p1", 1000.0, planogram))
    assert monitor.state()["last_service"] is None  # a planogram change is not a visit
    _apply(journal, Adjust("r1", 2000.0, ((SlotKey(1), 5),)))
    assert monitor.state()["last_service"] == 2000.0

    # The sample machine's door counter grows between two reads: a door opening at the read.
    reporter.process(audit_bytes(), ReadContext("a1", 3000.0, "test"))
    assert monitor.state()["last_service"] == 2000.0  # the first read is only the baseline
    reporter.process(audit_bytes(door_openings=14), ReadContext("a2", 4000.0, "test"))
    assert monitor.state()["last_service"] == 4000.0
    # A logged door opening counts at its own time, in the machine's zone.
    logged = make_audit(
        serial="S1",
        events=[Event("EGS", "240601", "0815")],
        event_counters=[EventCounter("EGS", 0, 1)],
    )
    before = make_audit(serial="S1", event_counters=[EventCounter("EGS", 0, 1)])
    late = dt.datetime(2024, 6, 1, 12, 0, tzinfo=BERLIN).timestamp()
    reporter.process(write(before), ReadContext("b1", late - 10, "test"))
    reporter.process(write(logged), ReadContext("b2", late, "test"))
    door = dt.datetime(2024, 6, 1, 8, 15, tzinfo=BERLIN).timestamp()
    assert monitor.state()["last_service"] == door
    # An older door entry never moves it back.
    older = make_audit(
        serial="S1",
        events=[Event("EGS", "240601", "0815"), Event("EGS", "240501", "0815")],
        event_counters=[EventCounter("EGS", 0, 1)],
    )
    reporter.process(write(older), ReadContext("b3", late + 10, "test"))
    assert monitor.state()["last_service"] == door
    _apply(journal, Adjust("u1", door + 60, ((SlotKey(1), -1),)))  # an unload is a visit too
    assert monitor.state()["last_service"] == door + 60
    journal.close()


def test_no_recent_sales_counts_from_the_first_start_and_the_tick_sees_it_flip(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal.sqlite3"
    machine = Machine(Journal(path))
    first = machine.now
    monitor = machine.monitor(no_sales_window_h=2.0)
    assert monitor.state()["no_recent_sales"] is False
    machine.journal.close()

    machine = Machine(Journal(path), now=first + 1.5 * HOUR)  # a restart keeps the first start
    monitor = machine.monitor(no_sales_window_h=2.0)
    monitor.tick()
    assert len(machine.published) == 1  # the first look
    monitor.tick()
    assert len(machine.published) == 1  # nothing changed: no publish
    machine.now = first + 2 * HOUR
    monitor.tick()
    assert len(machine.published) == 2
    assert monitor.state()["no_recent_sales"] is True

    free = SaleRow(machine.now, 1, 0, Payment.CASHLESS, VendType.FREE)
    machine.journal.commit([], [], sales=[("f1", free)], durable=True)
    assert monitor.state()["no_recent_sales"] is True  # a free vend is not a sale
    paid = SaleRow(machine.now, 1, 150, Payment.CASH, VendType.PAID)
    machine.journal.commit([], [], sales=[("s1", paid)], durable=True)
    assert monitor.state()["no_recent_sales"] is False
    machine.now += 2 * HOUR - 1
    assert monitor.state()["no_recent_sales"] is False
    machine.now += 1
    monitor.tick()
    assert monitor.state()["no_recent_sales"] is True
    machine.journal.close()


def test_the_tick_publishes_each_operating_state_change_once(tmp_path: Path) -> None:
    machine = Machine(Journal(tmp_path / "journal.sqlite3"))
    monitor = machine.monitor(out_of_service_after_s=30.0)
    seen: list[str] = []

    def look(ticks: float) -> None:
        machine.ticks = ticks
        before = len(machine.published)
        monitor.tick()
        if len(machine.published) > before:
            seen.append(monitor.state()["operating_state"])

    look(0.0)
    look(1.0)
    machine.link, machine.reader = True, State.ENABLED
    look(2.0)
    machine.reader = State.DISABLED
    look(3.0)
    look(32.9)
    look(33.0)
    look(40.0)
    machine.link = False
    look(41.0)
    assert seen == ["unknown", "operating", "out_of_service", "no_connection"]
    machine.journal.close()
