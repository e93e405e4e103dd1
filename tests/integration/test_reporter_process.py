"""The reporter over a real journal: what each read reports, and when the baseline moves."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import cbor2
import pytest

from tests.samples import audit_bytes
from vmc.cloud.messages import VendType
from vmc.cloud.topics import Topics
from vmc.config import DexConfig
from vmc.journal import Journal, StockWrite
from vmc.planogram import Planogram
from vmc.services.audit_store import AuditStore, next_read
from vmc.services.reporter import BASELINE_ID, ReadContext, Reporter
from vmc.stock import Adjust, ChangePlanogram, Operation, SlotKey, Vend

# Two reads of vmc's sample machine: 11 vends worth 1000 in between, and two door openings.
FIRST = audit_bytes()
SECOND = audit_bytes({1: 2, 2: 3, 5: 1, 7: 5}, door_openings=14)


def _reporter(tmp_path: Path, **config: Any) -> Reporter:
    journal = Journal(tmp_path / "journal.sqlite3")
    store = AuditStore(tmp_path / "audits", 3)
    return Reporter(DexConfig(**config), journal, store, Topics("m1"), clock=lambda: 1000.0)


def _process(reporter: Reporter, raw: bytes, name: str, at: float = 1000.0) -> Any:
    return reporter.process(raw, ReadContext(name, at, "test"))


def _stock_apply(journal: Journal, op: Operation) -> None:
    """One stock operation committed as the daemon commits it (vend, refill, planogram)."""
    stock = journal.load_stock()
    applied = stock.apply(op)
    journal.commit([], [], stock=[StockWrite(op.op_id, op.at, stock, applied)], durable=True)


def _bus_vends(journal: Journal, sold: dict[int, int], vend_type: VendType = VendType.PAID) -> None:
    for selection, count in sold.items():
        for n in range(count):
            _stock_apply(
                journal, Vend(f"v{selection}.{n}.{vend_type}", 1500.0, selection, vend_type)
            )


def _reconciled(reporter: Reporter) -> list[dict[str, Any]]:
    return [m for m in _sent(reporter) if m["type"] == "stock.reconcile"]


# What SECOND's PA2 says was sold since FIRST, per selection.
SOLD = {1: 2, 2: 3, 5: 1, 7: 5}


def test_stock_reconcile_is_silent_when_the_bus_saw_what_the_audit_counts(
    tmp_path: Path,
) -> None:
    reporter = _reporter(tmp_path)
    _process(reporter, FIRST, "read1")
    _bus_vends(reporter.journal, SOLD)
    _bus_vends(reporter.journal, {3: 4}, VendType.TEST)  # PA3, not PA2: not compared
    _process(reporter, SECOND, "read2", at=2000.0)
    assert [m["type"] for m in _sent(reporter)][4:6] == ["audit.delta", "sales.report"]
    assert _reconciled(reporter) == []


def test_stock_reconcile_reports_each_selection_that_differs_and_the_stock_follows_the_bus(
    tmp_path: Path,
) -> None:
    reporter = _reporter(tmp_path)
    journal = reporter.journal
    planogram = {
        "version": 1,
        "products": [{"id": "bar"}],
        "selections": [
            {
                "number": n,
                "product": "bar",
                "price": 100,
                "capacity": 10,
                "par_level": 8,
                "alarm_level": 1,
            }
            for n in (2, 9)
        ],
    }
    _stock_apply(journal, ChangePlanogram("p1", 900.0, Planogram.from_mapping(planogram)))
    _stock_apply(journal, Adjust("r1", 900.0, ((SlotKey(2), 8), (SlotKey(9), 8))))
    _process(reporter, FIRST, "read1")
    # The reader missed one vend of 2 and the one of 5 (say, tokens); it saw one of 9 that the
    # audit does not count, and one of 41, a selection the audit does not list.
    _bus_vends(journal, {1: 2, 2: 2, 7: 5, 9: 1, 41: 1})
    _process(reporter, SECOND, "read2", at=2000.0)
    found = [(e["selection"], e["audit_vends"], e["bus_vends"]) for e in _reconciled(reporter)]
    assert found == [(2, 3, 2), (5, 1, 0), (9, 0, 1), (41, None, 1)]
    first = _reconciled(reporter)[0]
    assert (first["read_id"], first["baseline_read_id"]) == ("read2", "read1")
    assert (first["since"], first["until"]) == (1000.0, 2000.0)
    assert journal.load_stock().levels == {SlotKey(2): 6, SlotKey(9): 7}
    # The next read starts from this one: no vend since, nothing differs.
    _process(reporter, SECOND, "read3", at=3000.0)
    assert len(_reconciled(reporter)) == 4


def test_stock_reconcile_counts_from_when_the_read_started(tmp_path: Path) -> None:
    reporter = _reporter(tmp_path)
    _process(reporter, FIRST, "read1")
    _bus_vends(reporter.journal, SOLD)
    started = reporter.journal.load_stock().paid_vends
    _bus_vends(reporter.journal, {4: 1})  # during the DEX transfer: after the VMC's snapshot
    reporter.process(SECOND, ReadContext("read2", 2000.0, "test", started))
    assert _reconciled(reporter) == []
    _process(reporter, audit_bytes({1: 2, 2: 3, 4: 1, 5: 1, 7: 5}), "read3", at=3000.0)
    assert _reconciled(reporter) == []


def _sent(reporter: Reporter) -> list[dict[str, Any]]:
    return [cbor2.loads(row.payload) for row in reporter.journal.pending(1000)]


def test_first_read_is_the_baseline_then_deltas_follow(tmp_path: Path) -> None:
    reporter = _reporter(tmp_path)
    first = _process(reporter, FIRST, "read1")
    assert first.valid
    assert first.delta is None
    assert [m["type"] for m in _sent(reporter)] == ["audit.report", "audit.summary"]
    second = _process(reporter, SECOND, "read2")
    assert second.delta is not None
    assert second.delta.paid.vends == 11
    kinds = [m["type"] for m in _sent(reporter)]
    assert kinds[2:6] == ["audit.report", "audit.summary", "audit.delta", "sales.report"]
    assert "event" in kinds[6:]
    sales = next(m for m in _sent(reporter) if m["type"] == "sales.report")
    assert sum(slot["sales"] for slot in sales["slots"]) == 11
    assert sum(slot["cash"] for slot in sales["slots"]) == 1000
    assert {
        "slotId",
        "product",
        "price",
        "itemsLeft",
        "salesSinceRefill",
        "capacity",
        "sales",
        "cash",
    } <= set(sales["slots"][0])
    assert reporter.journal.state(BASELINE_ID) == b"read2"


def test_sales_report_after_an_audit_carries_the_stock_of_each_planogram_slot(
    tmp_path: Path,
) -> None:
    reporter = _reporter(tmp_path)
    journal = reporter.journal
    planogram = {
        "version": 1,
        "products": [{"id": "bar"}],
        "selections": [
            {
                "number": 2,
                "product": "bar",
                "price": 100,
                "capacity": 10,
                "par_level": 8,
                "alarm_level": 1,
            },
        ],
    }
    _stock_apply(journal, ChangePlanogram("p1", 900.0, Planogram.from_mapping(planogram)))
    _stock_apply(journal, Adjust("r1", 900.0, ((SlotKey(2), 8),)))
    _process(reporter, FIRST, "read1")
    _bus_vends(journal, SOLD)
    _process(reporter, SECOND, "read2", at=2000.0)
    sales = next(m for m in _sent(reporter) if m["type"] == "sales.report")
    by_slot = {slot["slotId"]: slot for slot in sales["slots"]}
    two = by_slot["2"]
    assert (two["itemsLeft"], two["salesSinceRefill"], two["capacity"], two["sales"]) == (
        5,
        3,
        10,
        3,
    )
    # A selection the planogram does not count keeps the audit's fields and no stock.
    seven = by_slot["7"]
    assert (seven["itemsLeft"], seven["salesSinceRefill"], seven["capacity"]) == (None,) * 3
    assert seven["sales"] == 5


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_an_incomplete_audit_is_reported_but_never_moves_the_baseline(
    tmp_path: Path, cut: float
) -> None:
    reporter = _reporter(tmp_path)
    _process(reporter, FIRST, "read1")
    outcome = _process(reporter, SECOND[: int(len(SECOND) * cut)], "cut")
    assert outcome.ok
    assert not outcome.valid
    report = [m for m in _sent(reporter) if m["type"] == "audit.report"][-1]
    assert report["valid"] is False
    assert reporter.journal.state(BASELINE_ID) == b"read1"
    stamps = reporter.timestamps()
    assert stamps["last_acquired_report"] == 1000.0


def test_a_g85_mismatch_is_not_a_baseline(tmp_path: Path) -> None:
    reporter = _reporter(tmp_path)
    raw = FIRST.replace(b"VA1*", b"VA1*9", 1)
    outcome = reporter.process(raw, ReadContext("bad", 1000.0, "test"))
    assert not outcome.valid
    assert reporter.journal.state(BASELINE_ID) is None
    assert reporter.timestamps()["last_report"] is None


def test_garbage_is_a_failed_read(tmp_path: Path) -> None:
    reporter = _reporter(tmp_path)
    outcome = reporter.process(b"\x00\x01 nothing here", ReadContext("junk", 1000.0, "test"))
    assert not outcome.ok
    (failed,) = _sent(reporter)
    assert failed["type"] == "audit.failed"
    assert failed["step"] == "parse"
    assert failed["received"] == 15


def test_upload_encodings(tmp_path: Path) -> None:
    reporter = _reporter(tmp_path, upload_encoding="cp1251", upload_base64=True, evadts_port=2)
    _process(reporter, FIRST, "read1")
    report = _sent(reporter)[0]
    assert report["encoding"] == "cp1251"
    assert report["base64"] is True
    assert report["evadts_port"] == 2
    import base64

    assert base64.b64decode(report["data"]) == FIRST


async def test_a_missing_port_is_a_failed_read(tmp_path: Path) -> None:
    reporter = _reporter(tmp_path, port="pty:///dev/pts/9999")
    outcome = await reporter.read("test")
    assert not outcome.ok
    assert outcome.detail.startswith("open:")


def test_the_store_keeps_the_last_n(tmp_path: Path) -> None:
    store = AuditStore(tmp_path, keep=3)
    for i in range(5):
        store.save(b"x" * i, f"read{i}", 1000.0 + i)
    assert [p.read_bytes() for p in store.files()] == [b"xx", b"xxx", b"xxxx"]


def test_next_scheduled_read() -> None:
    tz = dt.timezone(dt.timedelta(hours=2))
    now = dt.datetime(2026, 11, 23, 13, 59, 30, tzinfo=tz)
    assert next_read(now, ("02:00", "14:00")) == dt.datetime(2026, 11, 23, 14, 0, tzinfo=tz)
    later = dt.datetime(2026, 11, 23, 14, 0, tzinfo=tz)
    assert next_read(later, ("02:00", "14:00")) == dt.datetime(2026, 11, 24, 2, 0, tzinfo=tz)
    assert next_read(now, ()) is None
