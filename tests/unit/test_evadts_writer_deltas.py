"""The EVA-DTS writer (round trips through the parser) and deltas between two reads."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.crc16 import crc16_arc
from protocols.evadts import parse
from protocols.evadts.deltas import Basis, Change, delta
from protocols.evadts.records import (
    Audit,
    Cash,
    CashIn,
    CashOut,
    Counts,
    CrcStatus,
    Currency,
    Device,
    Event,
    EventCounter,
    Machine,
    ManufacturerRecord,
    PaymentSales,
    Peripheral,
    Product,
    ReadStats,
    Sales,
    Stamp,
)
from protocols.evadts.writer import AuditWriteError, make_audit, write
from tests.corpus import DEX
from tests.samples import audit_bytes

ROOT = Path(__file__).resolve().parents[2]


def read(name: str) -> Audit:
    return parse(DEX.read(name))


def product(selection: str, price: int, vends: int, vends_reset: int | None = None) -> Product:
    reset = vends if vends_reset is None else vends_reset
    return Product(
        selection, price, f"ITEM {selection}", Sales(vends, vends * price, reset, reset * price)
    )


# -- writer -----------------------------------------------------------------------------------


def test_make_audit_writes_a_valid_report() -> None:
    products = [product("1", 125, 10), product("2", 75, 3)]
    events = [Event("EGS", "240101", "1200", 5)]
    counters = [EventCounter("EGS", 1, 7, active=False)]
    data = write(
        make_audit(
            serial="SIM0000001",
            model="SIM",
            products=products,
            events=events,
            event_counters=counters,
            currency="EUR",
        )
    )
    lines = data.split(b"\r\n")
    assert lines[0] == b"DXS*VMC0000001*VA*V0/6*1"
    assert lines[1] == b"ST*001*0001"
    assert lines[-4:] == [
        lines[-4],
        b"SE*" + str(len(lines) - 3).encode() + b"*0001",
        b"DXE*1*1",
        b"",
    ]
    g85 = lines[-4]
    body = data[data.index(b"ST*") : data.index(b"G85*")]
    assert g85 == b"G85*%04X" % crc16_arc(body)  # MSB first, upper case
    assert b"\n" not in data.replace(b"\r\n", b"")
    audit = parse(data)
    assert (audit.crc, audit.complete, audit.warnings) == (CrcStatus.OK, True, ())
    assert audit.paid == Sales(13, 1475, 13, 1475)  # VA1 = the products added up
    assert audit.machine == Machine(serial="SIM0000001", model="SIM")
    assert audit.currency == Currency(2, None, "EUR")
    assert audit.products == tuple(products)
    assert audit.events == tuple(events)
    assert audit.event_counters == tuple(counters)


def test_writer_escapes_text_and_refuses_what_it_cannot_carry() -> None:
    tricky = Product("A*1", 5, "Cola^2A^ 0,33\r\n\x85", Sales(1, 5, 1, 5))
    data = write(make_audit(serial="S*1", products=[tricky]))
    assert b"S^2A^1" in data
    assert parse(data).products == (tricky,)
    with pytest.raises(AuditWriteError):
        write(make_audit(serial="\u20ac"))
    with pytest.raises(AuditWriteError):
        write(replace(make_audit(serial="1"), other=(("XX1", "a*b"),)))


@pytest.mark.parametrize("path", DEX.params())
def test_every_corpus_audit_survives_write_and_parse(path: Path) -> None:
    audit = parse(path.read_bytes())
    again = parse(write(audit))
    assert (again.crc, again.complete, again.warnings) == (CrcStatus.OK, True, ())
    assert replace(again, crc=audit.crc, complete=audit.complete, warnings=audit.warnings) == audit


# Strings the writer must carry: Latin-1, stripped (the parser strips padding), and no "DXS"
# (an element ending in it after a non-alphanumeric character would start an audit).
TEXT = (
    st.text(st.characters(min_codepoint=1, max_codepoint=255), min_size=1, max_size=12)
    .map(str.strip)
    .filter(lambda text: bool(text) and "DXS" not in text)
)
OPT_TEXT = st.none() | TEXT
RAW = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="*"), max_size=8
).filter(lambda text: "DXS" not in text)
COUNT = st.none() | st.integers(0, 4294967294)
SALES = st.builds(Sales, COUNT, COUNT, COUNT, COUNT)
DEVICE = st.builds(Device, OPT_TEXT, OPT_TEXT, OPT_TEXT)
STAMP = st.builds(Stamp, OPT_TEXT, OPT_TEXT)


def raw(*tags: str) -> st.SearchStrategy[tuple[tuple[str, ...], ...]]:
    """Raw records with the given segment ids, as the parser keeps them."""
    record = st.tuples(st.sampled_from(tags), st.lists(RAW, max_size=4)).map(
        lambda parts: (parts[0], *parts[1])
    )
    return st.lists(record, max_size=3).map(tuple)


@st.composite
def products(draw: st.DrawFn) -> Product:
    by_payment = tuple(
        draw(st.lists(st.builds(PaymentSales, OPT_TEXT, OPT_TEXT, COUNT, SALES), max_size=2))
    )
    return Product(
        draw(TEXT),
        draw(COUNT),
        draw(OPT_TEXT),
        draw(SALES if by_payment else st.none() | SALES),  # no PA2: the parser adds PA7 up
        draw(st.none() | SALES),
        draw(st.none() | SALES),
        by_payment,
        draw(raw("PA5", "PA6", "PA8")),
    )


AUDITS = st.builds(
    Audit,
    sender=TEXT,
    version=TEXT,
    machine=st.builds(
        Machine, OPT_TEXT, OPT_TEXT, OPT_TEXT, OPT_TEXT, OPT_TEXT, st.none() | DEVICE
    ),
    currency=st.builds(Currency, st.integers(0, 9), OPT_TEXT, OPT_TEXT),
    clock=st.none() | STAMP,
    paid=st.none() | SALES,
    test=st.none() | SALES,
    free=st.none() | SALES,
    cash=st.builds(
        Cash,
        st.none() | DEVICE,
        st.none() | SALES,
        st.none() | st.builds(CashIn, *[COUNT] * 10),
        st.none() | st.builds(CashOut, *[COUNT] * 4),
        raw("CA7", "CA8", "CA9", "CA10", "CA17"),
    ),
    bills=st.builds(Peripheral, st.none() | DEVICE, st.none(), raw("BA2", "BA5")),
    cashless=st.builds(Peripheral, st.none() | DEVICE, st.none() | SALES, raw("DA3", "DA5")),
    cashless2=st.builds(Peripheral, st.none() | DEVICE, st.none() | SALES, raw("DB4", "DB10")),
    tokens=st.builds(Peripheral, st.none(), st.none() | SALES, raw("TA3", "TA7")),
    products=st.lists(products(), max_size=5).map(tuple),
    events=st.lists(
        st.builds(Event, TEXT, OPT_TEXT, OPT_TEXT, COUNT, COUNT, OPT_TEXT), max_size=3
    ).map(tuple),
    event_counters=st.lists(
        st.builds(EventCounter, TEXT, COUNT, COUNT, OPT_TEXT, st.none() | st.booleans(), COUNT),
        max_size=3,
    ).map(tuple),
    reads=st.none() | st.builds(ReadStats, COUNT, *[OPT_TEXT] * 6, COUNT, COUNT),
    initialised=st.none() | STAMP,
    prices_set=st.none() | STAMP,
    power_outages=st.none() | st.builds(Counts, COUNT, COUNT),
    manufacturer=st.lists(
        st.builds(ManufacturerRecord, RAW, st.lists(RAW, max_size=3).map(tuple)), max_size=3
    ).map(tuple),
    other=raw("LA1", "SA2", "SD1", "PP1", "EA6", "XX1"),
)


@settings(max_examples=300)
@given(AUDITS)
def test_written_audits_parse_back_to_the_same_records(audit: Audit) -> None:
    again = parse(write(audit))
    assert (again.crc, again.complete, again.warnings) == (CrcStatus.OK, True, ())
    assert replace(again, crc=audit.crc, complete=audit.complete) == audit


# -- deltas -----------------------------------------------------------------------------------


@DEX.needed
def test_vec91_between_two_reads() -> None:
    result = delta(read("vec91_soda_read1.dex"), read("vec91_soda_read2.dex"))
    assert not result.baseline_reset
    assert result.warnings == ()
    sold = {s.selection: s.change for s in result.selections if s.change.vends}
    assert sold == {
        "1": Change(2, 250, Basis.INIT),
        "5": Change(2, 250, Basis.INIT),
        "8": Change(5, 375, Basis.INIT),
        "9": Change(2, 150, Basis.INIT),
    }
    assert len(result.selections) == 7
    assert result.paid == Change(11, 1025, Basis.INIT)
    assert result.cash_in == Change(None, 1150, Basis.INIT)
    assert result.cash_out == Change(None, 125, Basis.INIT)
    assert result.test == Change(0, 0, Basis.INIT)
    assert result.free == Change()  # VA3 not supported
    assert result.cashless == Change()
    assert result.new_events == ()
    assert [(i.code, i.increase) for i in result.event_increases] == [("DO", 4)]


@DEX.needed
def test_necta_reads_of_another_serial_start_a_new_baseline() -> None:
    result = delta(
        read("necta_pc5461c_bluered_20191203_1145.dex"),
        read("necta_pc5461c_bluered_20191203_1220.dex"),
    )
    assert result.baseline_reset
    assert "machine serial changed from NEC01190468 to NEC01190469" in result.warnings[0]
    assert result.paid == Change(86, 0, Basis.RESET)
    assert result.free == Change(163, 163, Basis.RESET)
    sold = {s.selection: s.change for s in result.selections}
    assert sold["2"] == Change(7, 0, Basis.RESET)
    assert sold["3"] == Change(19, 0, Basis.RESET)
    assert all(change.vends is None or change.vends >= 0 for change in sold.values())
    assert len(result.new_events) == 15  # the old read had no EA1


def test_a_counter_going_down_starts_a_new_baseline() -> None:
    old = make_audit(serial="M1", products=[product("1", 100, 50, 5)])
    new = make_audit(serial="M1", products=[product("1", 100, 3, 3)])
    result = delta(old, new)
    assert result.baseline_reset
    assert "went down (VA1, PA2 1)" in result.warnings[0]
    assert result.selections[0].change == Change(3, 300, Basis.RESET)
    assert result.paid == Change(3, 300, Basis.RESET)


def test_a_changed_initialisation_date_starts_a_new_baseline() -> None:
    old = replace(
        make_audit(serial="M1", products=[product("1", 100, 5)]), initialised=Stamp("240101")
    )
    new = replace(
        make_audit(serial="M1", products=[product("1", 100, 9, 2)]), initialised=Stamp("240301")
    )
    result = delta(old, new)
    assert result.baseline_reset
    assert result.selections[0].change == Change(2, 200, Basis.RESET)


def _reset_only(vends: int, reads_with_reset: int | None) -> Audit:
    audit = make_audit(
        serial="K1", products=[Product("1", 5, None, Sales(None, None, vends, vends * 5))]
    )
    return replace(audit, reads=ReadStats(reads_with_reset))


@pytest.mark.parametrize(
    ("old_reads", "new_reads", "expected"),
    [
        (10, 11, 7),  # reset at the read in between (AUTO mode): the new counter is the delta
        (None, None, 7),
        (10, 10, 3),  # no reset in between (SAVE mode): subtract
    ],
)
def test_reset_counters_stand_in_where_init_is_absent(
    old_reads: int | None, new_reads: int | None, expected: int
) -> None:
    result = delta(_reset_only(4, old_reads), _reset_only(7, new_reads))
    assert not result.baseline_reset
    assert result.selections[0].change == Change(expected, expected * 5, Basis.RESET)


def test_new_and_missing_selections() -> None:
    old = make_audit(serial="M1", products=[product("1", 100, 5), product("2", 50, 1)])
    new = make_audit(serial="M1", products=[product("1", 100, 6), product("3", 70, 4, 1)])
    result = delta(old, new)
    assert not result.baseline_reset
    assert [(s.selection, s.change) for s in result.selections] == [
        ("1", Change(1, 100, Basis.INIT)),
        ("3", Change(1, 70, Basis.RESET)),
    ]
    assert result.warnings == (
        "selection 3 is not in the old read; its reset counters used",
        "selections missing from the new read: 2",
    )


def test_new_events_and_increased_counters() -> None:
    door = Event("EGS", "240101", "0800")
    old = replace(
        make_audit(serial="M1"),
        events=(door,),
        event_counters=(
            EventCounter("EGS", 1, 10),
            EventCounter("EJJ", 0, 2),
            EventCounter("EJJ", 0, 5),
        ),
    )
    later = (door, Event("EGS", "240102", "0900"), door)
    new = replace(
        make_audit(serial="M1"),
        events=later,
        event_counters=(
            EventCounter("EGS", 0, 12, active=True),
            EventCounter("EJJ", 0, 2),
            EventCounter("EJJ", 0, 6),
            EventCounter("OBH", 1, None),
        ),
    )
    result = delta(old, new)
    assert result.new_events == later[1:]  # the repeated entry is new once
    assert [(i.code, i.increase, i.active) for i in result.event_increases] == [
        ("EGS", 2, True),
        ("EJJ", 1, None),
        ("OBH", 1, None),
    ]


def _vmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmc.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.fixture
def two_reads(tmp_path: Path) -> tuple[Path, Path]:
    """Two reads of vmc's sample machine: 2 sold of selection 3, 5 of 8; two door openings."""
    old, new = tmp_path / "old.dex", tmp_path / "new.dex"
    old.write_bytes(audit_bytes())
    new.write_bytes(audit_bytes({3: 2, 8: 5}, door_openings=14))
    return old, new


def test_cli_delta_json(two_reads: tuple[Path, Path]) -> None:
    done = _vmctl("dex", "delta", *map(str, two_reads), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {
        "selections",
        "paid",
        "cash",
        "cashless",
        "tokens",
        "test",
        "free",
        "new_events",
        "baseline_reset",
        "warnings",
    } <= result.keys()
    assert result["baseline_reset"] is False
    assert result["paid"] == {"vends": 7, "value": 2 * 125 + 5 * 100, "basis": "init"}
    assert {"selection": "8", "vends": 5, "value": 500, "basis": "init"} in result["selections"]
    assert result["new_events"] == [
        {
            "kind": "counter",
            "code": "EGS",
            "date": None,
            "time": None,
            "duration": None,
            "count": 2,
            "active": False,
        }
    ]


def test_cli_delta_baseline_and_human_summary(tmp_path: Path) -> None:
    old, new = tmp_path / "old.dex", tmp_path / "new.dex"
    old.write_bytes(audit_bytes())
    new.write_bytes(audit_bytes({3: 2}, serial="SIM0004712"))
    result = json.loads(_vmctl("dex", "delta", str(old), str(new), "--json").stdout)
    assert result["baseline_reset"] is True
    assert any("machine serial changed" in warning for warning in result["warnings"])
    done = _vmctl("dex", "delta", str(old), str(new))
    assert done.returncode == 0
    assert "new baseline: yes" in done.stdout


def test_cli_delta_of_garbage_exits_2(two_reads: tuple[Path, Path], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dex"
    garbage.write_bytes(b"not an audit\n")
    done = _vmctl("dex", "delta", str(two_reads[0]), str(garbage), "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
