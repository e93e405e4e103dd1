"""Traces replayed byte for byte against the sans-I/O cashless core: the corpus's and vmc's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from sim.replay import replay_in_process
from sim.trace import read_trace
from tests.corpus import MDB
from tests.samples import TRACE_READER as RECORDED_READER

# The reader configuration the corpus traces were recorded with (their header comments).
TRACE_READER = ReaderConfig(
    level=1,
    currency=643,
    scale_factor=5,
    decimal_places=1,
    max_response_time=120,
    refunds=False,
    multivend=False,
    cash_sale=True,
    manufacturer="EFR",
    serial="0123456789AB",
    model="0123456789AB",
    software_version=0x0100,
)


def _enabled_device() -> CashlessDevice:
    """A reader brought to Enabled by the init sequence of the session trace."""
    device = CashlessDevice(TRACE_READER)
    lines = read_trace(MDB.path("firmware-usbhost_l1_vend_session.mdb"))
    enable = next(i for i, line in enumerate(lines) if line.comment == "READER ENABLE")
    init = lines[: enable + 2]
    assert not replay_in_process(device, init)
    return device


@MDB.needed
def test_corpus_has_both_traces() -> None:
    assert len(MDB.files) == 2


@pytest.mark.parametrize("path", MDB.params())
def test_trace_replays_exactly(path: Path) -> None:
    lines = read_trace(path)
    device = CashlessDevice(TRACE_READER) if "vend_session" in path.name else _enabled_device()
    mismatches = replay_in_process(device, lines)
    assert not mismatches, "\n\n".join(m.report() for m in mismatches)


def test_a_recorded_session_replays_exactly(recorded_trace: Path) -> None:
    """What the recorder took from the simulated VMC and the core, the replayer plays back."""
    lines = read_trace(recorded_trace)
    assert any(line.comment == "VEND REQUEST" for line in lines)
    mismatches = replay_in_process(CashlessDevice(RECORDED_READER), lines)
    assert not mismatches, "\n\n".join(m.report() for m in mismatches)
