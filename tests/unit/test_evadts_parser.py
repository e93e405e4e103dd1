"""The EVA-DTS parser against the corpus of real audits, damaged input and the G85 rules.

Tests about the real audits skip where the corpus is absent (``tests/corpus.py``); the others
run on audits vmc's writer makes (``tests/samples.py``).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.crc16 import crc16_arc
from protocols.errors import ParseError
from protocols.evadts import NoAuditError, g85_crc, parse, parse_all
from protocols.evadts.records import (
    CashOut,
    Counts,
    CrcStatus,
    Device,
    Event,
    EventCounter,
    Sales,
    Stamp,
)
from tests.corpus import DEX
from tests.samples import AUDIT, SERIAL, audit_bytes

ROOT = Path(__file__).resolve().parents[2]

# G85 verdict and "trailer reached" per corpus file (the corpus's dex/README.md).
EXPECTED = {
    "animo_coffee_peanutpay.dex": (CrcStatus.OK, True),
    "fage_eagle2_no_st_no_g85.dex": (CrcStatus.ABSENT, True),
    "necta_concerto_bluered_20191206.dex": (CrcStatus.OK, True),
    "necta_kikko_bluered_20191230_1449_g85_nocrlf.dex": (CrcStatus.OK, True),
    "necta_pc5461c_bluered_20191203_1145.dex": (CrcStatus.OK, True),
    "necta_pc5461c_bluered_20191203_1220.dex": (CrcStatus.OK, True),
    "rheavendors_luce_x2.dex": (CrcStatus.OK, True),
    "vec91_soda_read1.dex": (CrcStatus.OK, True),
    "vec91_soda_read2.dex": (CrcStatus.OK, True),
    "wittern_gvc1_slot_preamble_truncated.dex": (CrcStatus.ABSENT, True),
    "wittern_gvc1_truncated_short.dex": (CrcStatus.ABSENT, False),
    "wittern_gvc_v11_lsle_ma5.dex": (CrcStatus.OK, True),
}

SUMMARY_KEYS = {"machine", "crc", "complete", "totals", "products", "events", "warnings"}
TOTALS_KEYS = {"paid_value_init", "paid_vends_init", "paid_value_reset", "paid_vends_reset"}
PRODUCT_KEYS = {
    "selection",
    "price",
    "product_id",
    "vends_init",
    "value_init",
    "vends_reset",
    "value_reset",
}
EVENT_KEYS = {"code", "date", "time", "duration", "count"}


# Input for the robustness tests: vmc's own audits, and the real ones where the corpus is there.
SAMPLES = {
    "own_first_read": AUDIT,
    "own_second_read": audit_bytes({n: n % 3 for n in range(1, 41)}),
    **{path.name: path.read_bytes() for path in DEX.files},
}


def read(name: str) -> bytes:
    return DEX.read(name)


@DEX.needed
def test_the_corpus_is_complete() -> None:
    assert sorted(EXPECTED) == [path.name for path in DEX.files]


@pytest.mark.parametrize("path", DEX.params())
def test_every_corpus_file_parses_with_its_crc_verdict(path: Path) -> None:
    audit = parse(path.read_bytes())
    assert (audit.crc, audit.complete) == EXPECTED[path.name]
    assert audit.sender  # every corpus file has its DXS
    json.dumps(audit.to_json())


@pytest.mark.parametrize("path", DEX.params())
@pytest.mark.parametrize("ending", ["\r\n", "\n", "\r"], ids=["crlf", "lf", "cr"])
def test_line_endings_do_not_change_the_audit(path: Path, ending: str) -> None:
    """LF-only files get their CRs back for G85; bare CR is a line end too."""
    text = path.read_bytes().decode("latin-1")
    lines = text.replace("\r\n", "\n").split("\n")
    assert parse(ending.join(lines).encode("latin-1")) == parse(text)


@DEX.needed
def test_vec91_totals_products_and_not_supported_fields() -> None:
    audit = parse(read("vec91_soda_read1.dex"))
    assert audit.paid == Sales(2778, 43111525, 2778, 270949)
    assert audit.currency.decimals == 2
    assert audit.free == Sales()  # VA3*-1*-1*-1*-1
    assert audit.cashless.sales == Sales()  # DA2*-1...
    products = {product.selection: product for product in audit.products}
    assert list(products) == ["1", "3", "5", "7", "8", "9", "10"]
    assert products["8"].price == 75
    assert products["8"].paid == Sales(398, 38649, 399, 38650)
    # PA204 -16748266 is no money amount: absent, with a warning
    assert products["5"].paid == Sales(288, 28949, 289, None)
    assert any("PA204" in warning for warning in audit.warnings)
    assert products["10"].other == (("PA5", "", "", "21"),)  # PA5 inside the LS/LE loop
    assert [counter.code for counter in audit.event_counters] == ["CR", "DO"]
    assert audit.event_counters[1].count == 561
    assert audit.reads is not None
    assert audit.reads.reads_with_reset == 4
    assert audit.power_outages == Counts(70, 70)
    assert audit.manufacturer[0].block == "ERROR"
    assert audit.manufacturer[0].fields == ("ACLO",)
    assert len(audit.manufacturer) == 24
    assert audit.cash.cash_in is not None
    assert audit.cash.cash_in.inserted_init == 283014
    assert audit.cash.cash_out == CashOut(8519, 574, 8519, 574)
    assert [record[0] for record in audit.cash.other] == ["CA9", "CA17", "CA17", "CA17"]
    assert audit.other == (("SD1", "000000"),)


@DEX.needed
def test_vec91_second_read() -> None:
    audit = parse(read("vec91_soda_read2.dex"))
    assert audit.paid == Sales(2789, 43112550, 2789, 271974)
    products = {product.selection: product for product in audit.products}
    assert products["8"].paid == Sales(403, 39024, 404, 39025)
    assert products["1"].paid == Sales(233, 23499, 233, 23499)


@DEX.needed
def test_necta_envelope_zero_decimals_and_product_blocks() -> None:
    audit = parse(read("necta_pc5461c_bluered_20191203_1145.dex"))
    assert audit.sender == "NEC1190468"
    assert audit.machine.serial == "NEC01190468"
    assert audit.machine.model == "CONCERTO"
    assert audit.currency.decimals == 0  # ID4*0: one element, no crash
    assert audit.clock == Stamp("191128", "043436")
    assert audit.paid == Sales(126979, 0, 111, 0)
    assert audit.free == Sales(8905, 8905, 246, 246)
    espresso = audit.products[0]
    assert (espresso.selection, espresso.price, espresso.product_id) == ("2", 1, "espresso")
    assert espresso.paid == Sales(404, 0, 13, 0)
    assert espresso.test == Sales(1, None, 0, None)
    assert espresso.free == Sales(267, 267, 10, None)
    assert len(audit.products) == 20
    assert {record[0] for record in audit.other} == {"PP1", "SA2", "LA1"}
    assert "ignored text before DXS" in audit.warnings
    assert "ignored text after DXE" in audit.warnings


@DEX.needed
def test_necta_kikko_shifted_pa1_reset_only_sales_and_g85_without_crlf() -> None:
    audit = parse(read("necta_kikko_bluered_20191230_1449_g85_nocrlf.dex"))
    first = audit.products[0]
    assert (first.selection, first.price) == ("1", 5)
    assert first.paid == Sales(None, None, 129, 0)  # sales only in PA203/PA204
    assert [product.selection for product in audit.products] == [str(n) for n in range(1, 17)]
    assert audit.products[7].price == 100
    assert any("KIKKO" in warning for warning in audit.warnings)
    assert audit.crc is CrcStatus.OK
    assert "G85 matches only without the CRLF before it" in audit.warnings
    assert audit.currency.decimals == 2  # no ID4: the default
    assert audit.machine.model == "KIKKO IFE"


@DEX.needed
def test_fage_no_st_events_and_junk_after_dxe() -> None:
    audit = parse(read("fage_eagle2_no_st_no_g85.dex"))
    assert audit.sender == "FAG"
    assert audit.version == "1"
    assert "no ST segment" in audit.warnings
    assert "ignored text after DXE" in audit.warnings
    assert audit.paid == Sales(3264, 175735, 163, 8885)
    assert audit.events[0] == Event("OCF_OFF", "201210", "0917")
    assert len(audit.events) == 27
    assert audit.initialised == Stamp("200909", "1653")
    assert audit.event_counters[0] == EventCounter("092Fidelity azzerato", 0, None, "0")
    assert audit.cashless.sales == Sales(275, 14630, 12, 600)
    assert audit.cashless2.sales == Sales(0, 0, 0, 0)
    assert [product.paid for product in audit.products[1:3]] == [
        Sales(0, 0, 84, 4200),
        Sales(0, 0, 78, 4680),
    ]


@DEX.needed
def test_rhea_pa7_by_payment_device_and_one_element_id4() -> None:
    audit = parse(read("rheavendors_luce_x2.dex"))
    assert audit.currency.decimals == 2
    coffee = audit.products[0]
    assert coffee.product_id == "KAFFEE SCHWARZ BOHNE"
    assert coffee.paid == Sales(602, 29790, 600, 29790)
    assert len(coffee.by_payment) == 8
    assert coffee.by_payment[2].device == "DA"
    assert coffee.by_payment[2].sales == Sales(182, 9100, 182, 9100)
    assert coffee.other == (("PA8", "0", "0", "0", "0"),)
    assert audit.products[-1].price is None  # PA1*18**USD
    assert audit.events[0].duration == 51678
    assert audit.event_counters[0].active is False
    assert audit.initialised == Stamp("980829", "1310")


@DEX.needed
def test_wittern_preamble_products_with_test_free_and_ea2_inside_the_loop() -> None:
    audit = parse(read("wittern_gvc1_slot_preamble_truncated.dex"))
    assert "ignored text before DXS" in audit.warnings
    assert audit.machine.model == "GVC1"  # padding stripped
    assert audit.machine.board == Device("11082110074", "GVC1", "8207")
    assert audit.cash.sales == Sales(302, 15600, 302, 15600)
    first = audit.products[0]
    assert (first.selection, first.price) == ("010", 50)
    assert first.test == Sales(2, 150, 2, 150)
    assert first.free == Sales(0, 0, 0, 0)
    assert first.other == (("PA5", "20120301", "125320", "0"),)
    assert len(audit.products) == 10
    assert len(audit.event_counters) == 5  # EA2 between products belongs to the audit


@DEX.needed
def test_truncated_file_is_an_incomplete_audit() -> None:
    audit = parse(read("wittern_gvc1_truncated_short.dex"))
    assert not audit.complete
    assert audit.crc is CrcStatus.ABSENT
    assert audit.cash.sales == Sales(0, 0, None, None)  # "CA2*0*0*", cut off
    assert "audit ends without SE or DXE (truncated)" in audit.warnings


@DEX.needed
def test_lsle_loop_ma5_block_and_empty_ea1() -> None:
    audit = parse(read("wittern_gvc_v11_lsle_ma5.dex"))
    assert audit.currency.decimals == 0
    assert [product.price for product in audit.products] == [500] * 10
    assert [record.block for record in audit.manufacturer][:2] == ["OPT1", "OPT2"]
    assert audit.events == ()
    assert audit.other == (("EA1", "", "", "", "", "", ""),)
    assert audit.cashless.sales == Sales(220, 12600, 0, 0)
    assert not [warning for warning in audit.warnings if "SE01" in warning]  # LS/LE not counted


@DEX.needed
def test_several_audits_in_one_file() -> None:
    truncated = read("wittern_gvc1_truncated_short.dex")
    complete = read("vec91_soda_read1.dex")
    audits = parse_all(truncated + b"\n" + complete + b"\n" + truncated)
    assert [audit.complete for audit in audits] == [False, True, False]
    assert parse(truncated + b"\n" + complete).machine.serial == "VCS90070146"
    assert parse(truncated + truncated).machine.serial == "WTN11240080108"


@DEX.needed
def test_a_file_without_dxs_is_read_from_its_first_segment() -> None:
    text = read("vec91_soda_read1.dex").split(b"\n", 1)[1]
    audit = parse(b"some header\n" + text)
    assert audit.paid == Sales(2778, 43111525, 2778, 270949)
    assert audit.crc is CrcStatus.OK
    assert audit.warnings[:2] == (
        "no DXS header; read from the first audit segment",
        "ignored text before the first audit segment",
    )


def test_damage_inside_an_audit_becomes_warnings() -> None:
    lines = [
        "DXS*XYZ1234567*VA*V0/6*1",
        "ST*001*0001",
        "ID4*12",
        "PA2*1*2*3*4",
        "Slot 010: Sprite: 25",
        "PA1*1*abc",
        *["PA2*x*1"] * 100,
        "SE*99*0001",
    ]
    audit = parse("\r\n".join(lines))
    assert audit.currency.decimals == 2
    assert audit.warnings[0] == "ID401: 12 decimal places; 2 assumed"
    assert audit.warnings[1] == "PA2 without a PA1 before it; kept as an unknown record"
    assert audit.other == (("PA2", "1", "2", "3", "4"),)
    assert audit.products[0].price is None
    assert "PA102: 'abc' is not a number" in audit.warnings
    assert len(audit.warnings) == 51
    assert audit.warnings[-1].startswith("... and ")
    assert audit.complete


@pytest.mark.parametrize(
    "data",
    [b"", b"\r\n\r\n", b"hello world", b"ST*001*0001\r\nSE*2*0001\r\n", b"\x00\xff" * 50],
)
def test_no_audit_is_one_clear_parse_error(data: bytes) -> None:
    with pytest.raises(NoAuditError, match="no EVA-DTS audit found") as caught:
        parse(data)
    assert "\n" not in str(caught.value)


def _with_g85(body: str, g85: str) -> bytes:
    return f"DXS*XYZ1234567*VA*V0/6*1\r\n{body}G85*{g85}\r\nSE*4*0001\r\nDXE*1*1\r\n".encode()


BODY = "ST*001*0001\r\nID1*123\r\n"
CRC_WITH = crc16_arc(BODY.encode())
CRC_WITHOUT = crc16_arc(BODY[:-2].encode())


def _swap(crc: int) -> int:
    return (crc >> 8) | (crc & 0xFF) << 8


@pytest.mark.parametrize(
    ("g85", "verdict", "warning"),
    [
        (f"{CRC_WITH:04X}", CrcStatus.OK, None),
        (f"{CRC_WITH:04x}", CrcStatus.OK, None),
        (f"{_swap(CRC_WITH):04X}", CrcStatus.OK, "swapped"),
        (f"{CRC_WITHOUT:04x}", CrcStatus.OK, "without the CRLF"),
        (f"{_swap(CRC_WITHOUT):04X}", CrcStatus.OK, "without the CRLF"),
        (f"{CRC_WITH ^ 1:04X}", CrcStatus.MISMATCH, "does not match"),
        ("12G4", CrcStatus.MISMATCH, "not 4 hex digits"),
        ("", CrcStatus.MISMATCH, "not 4 hex digits"),
    ],
)
def test_g85_verification(g85: str, verdict: CrcStatus, warning: str | None) -> None:
    audit = parse(_with_g85(BODY, g85))
    assert audit.crc is verdict
    g85_warnings = [w for w in audit.warnings if "G85" in w]
    if warning is None:
        assert g85_warnings == []
    else:
        assert len(g85_warnings) == 1
        assert warning in g85_warnings[0]


def test_g85_absent() -> None:
    data = b"DXS*XYZ1234567*VA*V0/6*1\r\nST*001*0001\r\nID1*123\r\nSE*3*0001\r\nDXE*1*1\r\n"
    assert parse(data).crc is CrcStatus.ABSENT
    assert parse(data).warnings == ()


def test_g85_of_an_lf_only_file_is_checked_with_crs() -> None:
    data = _with_g85(BODY, f"{CRC_WITH:04X}").replace(b"\r\n", b"\n")
    assert parse(data).crc is CrcStatus.OK


@given(st.binary(max_size=20_000))
def test_g85_crc_is_crc16_arc(data: bytes) -> None:
    assert g85_crc(data) == crc16_arc(data)


@pytest.mark.parametrize("size", [4095, 4096, 4097, 32766, 32767, 32768, 65535, 100_003, 1 << 20])
def test_g85_crc_folds_large_input_exactly(size: int) -> None:
    data = os.urandom(size)
    assert g85_crc(data) == crc16_arc(data)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_nothing_but_parse_error(data: bytes) -> None:
    with suppress(ParseError):
        parse_all(data)


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(
                ["DXS*A*VA*V0/6*1", "ST*001*0001", "PA1*1*5", "PA2*1*2", "G85*0000", "SE*x", "DXE"]
            ),
            st.builds(
                "*".join,
                st.lists(st.sampled_from(["PA1", "PA2", "VA1", "EA2", "-1", "", "^2A^", "9"])),
            ),
        ),
        max_size=30,
    ),
    st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_arbitrary_text_raises_nothing_but_parse_error(lines: list[str], ending: str) -> None:
    with suppress(ParseError):
        parse_all(ending.join(lines))


@pytest.mark.parametrize("name", SAMPLES)
def test_every_truncation_parses_or_raises_parse_error(name: str) -> None:
    data = SAMPLES[name]
    for end in range(len(data) + 1):
        with suppress(ParseError):
            parse_all(data[:end])


@settings(max_examples=200)
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=20),
)
def test_byte_flips_raise_nothing_but_parse_error(
    name: str, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(SAMPLES[name])
    for where, value in flips:
        data[int(where * len(data))] = value
    with suppress(ParseError):
        parse_all(bytes(data))


def _vmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmc.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("path", DEX.params())
def test_cli_parse_json_for_every_corpus_file(path: Path) -> None:
    done = _vmctl("dex", "parse", str(path), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["machine"].keys() >= {"serial", "model", "location"}
    assert summary["crc"] == EXPECTED[path.name][0].value
    assert summary["complete"] is EXPECTED[path.name][1]
    assert summary["totals"].keys() >= TOTALS_KEYS
    assert all(product.keys() >= PRODUCT_KEYS for product in summary["products"])
    assert all(event.keys() >= EVENT_KEYS for event in summary["events"])
    assert all(isinstance(warning, str) for warning in summary["warnings"])
    assert summary["audits"] == 1


@pytest.fixture
def own_audit(tmp_path: Path) -> Path:
    path = tmp_path / "own.dex"
    path.write_bytes(AUDIT)
    return path


def test_cli_parse_values(own_audit: Path) -> None:
    summary = json.loads(_vmctl("dex", "parse", str(own_audit), "--json").stdout)
    assert summary["machine"] == {
        "serial": SERIAL,
        "model": "SNACK 40",
        "location": "Hall 3",
        "build": "2024",
        "asset": None,
    }
    assert summary["totals"] == {
        "paid_value_init": 1099250,
        "paid_vends_init": 9740,
        "paid_value_reset": 278250,
        "paid_vends_reset": 2460,
    }
    assert summary["products"][0] == {
        "selection": "1",
        "price": 75,
        "product_id": "Wasser still",
        "vends_init": 107,
        "value_init": 8025,
        "vends_reset": 3,
        "value_reset": 225,
        "test": None,
        "free": None,
    }
    assert summary["products"][1]["product_id"] == "Café crème"  # written as Caf^E9^ cr^E8^me
    assert summary["events"][1]["code"] == "EGS"
    assert summary["events"][1]["count"] == 12


def test_cli_parse_human_summary(own_audit: Path) -> None:
    done = _vmctl("dex", "parse", str(own_audit))
    assert done.returncode == 0
    assert SERIAL in done.stdout
    assert "10992.50" in done.stdout  # ID401 = 2


@pytest.mark.parametrize("content", [b"", b"garbage\r\nmore garbage\r\n", bytes(range(256))])
def test_cli_parse_garbage_exits_2_with_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.dex"
    path.write_bytes(content)
    done = _vmctl("dex", "parse", str(path), "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "no EVA-DTS audit" in done.stderr


def test_cli_parse_missing_file_exits_2(tmp_path: Path) -> None:
    done = _vmctl("dex", "parse", str(tmp_path / "missing.dex"), "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_plain_product_reopens_when_more_of_its_group_follows() -> None:
    lines = [
        "DXS*XYZ1234567*VA*V0/6*1",
        "ST*001*0001",
        "PA1*1*100*COLA",
        "PA2*5*500*1*100",
        "EA1*EGS*200101",  # not a PA line: the group stays open
        "PA3*2*200*0*0",
        "PA1*2*150",
        "PA2*3*450*0*0",
        "LS*0100",
        "PA4*1*150*1*150",  # after LS/LE no group is open
        "PA1*3*-1*X",
        "PA2*1*2*3*4",
        "SE*12*0001",
    ]
    audit = parse("\r\n".join(lines))
    first, second, third = audit.products
    assert first.paid == Sales(5, 500, 1, 100)
    assert first.test == Sales(2, 200, 0, 0)
    assert (second.selection, second.price, second.product_id) == ("2", 150, None)
    assert second.paid == Sales(3, 450, 0, 0)
    assert second.test is None
    assert third.price is None  # a negative price: read by the general path
    assert third.paid == Sales(1, 2, 3, 4)
    assert ("PA4", "1", "150", "1", "150") in audit.other
    assert "PA4 without a PA1 before it; kept as an unknown record" in audit.warnings


@pytest.mark.parametrize("enabled", [True, False])
def test_parsing_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        parse(AUDIT)
        with suppress(NoAuditError):
            parse(b"garbage")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
