"""The corpus traces replayed byte for byte against the sans-I/O cashless core."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.mdb.cashless import CashlessDevice, ReaderConfig
from sim.replay import replay_in_process
from sim.trace import read_trace
from tests.conftest import MDB_TRACES

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
    lines = read_trace(MDB_TRACES[1])
    enable = next(i for i, line in enumerate(lines) if line.comment == "READER ENABLE")
    init = lines[: enable + 2]
    assert not replay_in_process(device, init)
    return device


def test_corpus_has_both_traces() -> None:
    assert len(MDB_TRACES) == 2


@pytest.mark.parametrize("path", MDB_TRACES, ids=lambda p: p.name)
def test_trace_replays_exactly(path: Path) -> None:
    lines = read_trace(path)
    device = CashlessDevice(TRACE_READER) if "vend_session" in path.name else _enabled_device()
    mismatches = replay_in_process(device, lines)
    assert not mismatches, "\n\n".join(m.report() for m in mismatches)
