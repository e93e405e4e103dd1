"""Audits and bus traces vmc makes itself: real-looking data for tests that need no corpus.

Audits come from vmc's EVA-DTS writer, the one the simulated VMC serves over DEX. Traces come
from the simulated VMC playing customers against the cashless core over a loopback, taken by
sim's trace recorder in the corpus format. Tests about the real files use ``tests/corpus.py``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from protocols.evadts.records import (
    Audit,
    Cash,
    Device,
    Event,
    EventCounter,
    Machine,
    Peripheral,
    Product,
    Sales,
    Stamp,
)
from protocols.evadts.writer import make_audit, write
from protocols.mdb.cashless import ReaderConfig
from sim.scenarios import Customers, run_customers
from sim.trace import TraceRecorder
from tests.loopback_rig import in_process_reader
from vmc.journal import Journal

PLANOGRAM: dict[str, Any] = {  # two plain products: the stock tests' machine
    "version": 1,
    "products": [{"id": "bar", "name": "Choco bar"}, {"id": "chips"}],
    "selections": [
        {
            "number": 1,
            "product": "bar",
            "price": 150,
            "capacity": 10,
            "par_level": 8,
            "alarm_level": 2,
        },
        {
            "number": 2,
            "product": "chips",
            "price": 200,
            "capacity": 6,
            "par_level": 5,
            "alarm_level": 1,
        },
    ],
}

SERIAL = "SIM0004711"
SELECTIONS = 40
NAMES = ("Cola 0,33", "Wasser still", "Café crème", "Müsli-Riegel", "Chips Paprika", "Äpfel")
TRACE_READER = ReaderConfig(level=3)
"""The reader configuration of the recorded trace (a replay needs the same)."""


def _product(selection: int, sold: int) -> Product:
    price = 50 + 25 * (selection % 6)
    vends = 100 + 7 * selection + sold
    since_reset = 3 * selection + sold
    return Product(
        str(selection),
        price,
        NAMES[selection % len(NAMES)],
        Sales(vends, vends * price, since_reset, since_reset * price),
    )


def machine_audit(
    sold: Mapping[int, int] | None = None, *, serial: str = SERIAL, door_openings: int = 12
) -> Audit:
    """A 40-selection machine's audit; ``sold`` adds vends per selection, as a later read.

    Paid by cash and card half and half, with a door-open event and its counter, so deltas,
    sales reports and events all have something to say.
    """
    extra = sold or {}
    products = [_product(n, extra.get(n, 0)) for n in range(1, SELECTIONS + 1)]
    audit = make_audit(
        serial=serial,
        products=products,
        events=[Event("EGS", "240601", "0815", 3)],
        event_counters=[EventCounter("EGS", door_openings // 4, door_openings, active=False)],
        currency="EUR",
        sender="SIM1234567",
    )
    half = Sales(*((total or 0) // 2 for total in audit.paid or Sales()))
    return replace(
        audit,
        machine=Machine(serial, "SNACK 40", "2024", "Hall 3", None, Device("B-17", "VMC-9", "4.2")),
        clock=Stamp("240601", "1200"),
        cash=Cash(Device("CC-1", "MECH", "1.0"), half),
        cashless=Peripheral(Device("RD-1", "vmc", "0.1"), half),
    )


def audit_bytes(
    sold: Mapping[int, int] | None = None, *, serial: str = SERIAL, door_openings: int = 12
) -> bytes:
    """The report of :func:`machine_audit`, as a DEX read carries it."""
    return write(machine_audit(sold, serial=serial, door_openings=door_openings))


AUDIT = audit_bytes()
"""A first read of the sample machine."""


async def record_trace(state_dir: Path, sessions: int = 12, seed: int = 7) -> str:
    """A trace of the simulated VMC initialising the cashless core and serving customers."""
    recorder = TraceRecorder()
    journal = Journal(state_dir / "journal.sqlite3")
    async with in_process_reader(TRACE_READER, journal, recorder=recorder) as reader:
        await reader.vmc.initialise(level=TRACE_READER.level)
        customers = Customers(reader.vmc, random.Random(seed), poll_period=0.005)
        await run_customers(customers, sessions, weights={"purchase": 3, "cash_sale": 1})
    journal.close()
    return recorder.text()
