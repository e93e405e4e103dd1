"""Trace files, the journal and log redaction."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ParseError
from protocols.mdb.words import Word
from sim.trace import Direction, TraceRecorder, exchanges, parse_trace
from tests.corpus import MDB
from vmc.cloud.messages import VendType
from vmc.journal import Journal, JournalRecord
from vmc.logs import configure_logging


def _parses_and_reformats(path: Path) -> None:
    lines = parse_trace(path.read_text())
    assert lines
    again = parse_trace("\n".join(line.format() for line in lines))
    assert [line.words for line in again] == [line.words for line in lines]
    pairs = list(exchanges(lines))
    assert all(vmc.direction is Direction.VMC for vmc, _ in pairs)


@pytest.mark.parametrize("path", MDB.params())
def test_corpus_traces_parse_and_reformat(path: Path) -> None:
    _parses_and_reformats(path)


def test_recorded_traces_parse_and_reformat(recorded_trace: Path) -> None:
    _parses_and_reformats(recorded_trace)


@pytest.mark.parametrize(
    "text",
    ["VMC 110 010", "VMC: 1100", "PER: 2FF", "XYZ: 000", "VMC:", "VMC: 1G0", "VMC: 110 01"],
)
def test_malformed_trace_lines_name_the_line(text: str) -> None:
    with pytest.raises(ParseError, match="line 2"):
        parse_trace("# header\n" + text + "\n")


@given(st.text(max_size=300))
def test_trace_parser_only_raises_parse_error(text: str) -> None:
    with contextlib.suppress(ParseError):
        parse_trace(text)


def test_recorder_writes_the_corpus_format() -> None:
    recorder = TraceRecorder()
    recorder.add(Direction.VMC, [Word(0x12, mode=True), Word(0x12)], "POLL")
    recorder.add(Direction.PER, [Word(0x00, mode=True)])
    assert recorder.text() == "VMC: 112 012   # POLL\nPER: 100\n"


def test_journal_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.sqlite3"
    journal = Journal(path)
    journal.append(JournalRecord("vend_success", 1, 7, 120, VendType.FREE), durable=True)
    journal.append(JournalRecord("cash_sale", None, 3, 50, None))
    journal.close()
    again = Journal(path)
    assert again.records() == [
        JournalRecord("vend_success", 1, 7, 120, VendType.FREE),
        JournalRecord("cash_sale", None, 3, 50, None),
    ]
    assert len(again.records("cash_sale")) == 1
    again.close()


def test_logs_are_json_lines_and_secrets_are_masked() -> None:
    out = io.StringIO()
    configure_logging("info", out)
    structlog.get_logger("t").info("connected", broker="x", password="hunter2", api_token="t")
    structlog.get_logger("t").debug("hidden")
    line = json.loads(out.getvalue().strip())
    assert line["event"] == "connected"
    assert line["password"] == "***"
    assert line["api_token"] == "***"
    assert line["broker"] == "x"
    structlog.reset_defaults()
