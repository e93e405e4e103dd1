"""The bridge's planograms in its store, on both engines: the coils a planogram fills, and
what the machine's events said before and after."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from bridge import planograms
from bridge.store import CoilLevel, SqlStore, open_store
from tests.postgres import scratch_database


async def reported(store: SqlStore, machine: str, coil: CoilLevel) -> None:
    """A price and a level the machine's events gave (as the events' commit writes them)."""
    async with store.tx() as tx:
        await tx.execute(
            "INSERT INTO coils (machine, code, price, current_stock) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (machine, code) DO UPDATE SET"
            " price = COALESCE(excluded.price, coils.price),"
            " current_stock = COALESCE(excluded.current_stock, coils.current_stock)",
            machine,
            coil.code,
            coil.price,
            coil.current_stock,
        )


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_bridge_planogram_fills_the_coils(tmp_path: Path, engine: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        database: str | Path = tmp_path / "bridge.sqlite3"
        if engine == "postgresql":
            database = await stack.enter_async_context(scratch_database())
        store = open_store(database)
        await store.open()
        stack.push_async_callback(store.close)

        assert await planograms.stored_version(store, "m1") is None
        await reported(store, "m1", CoilLevel(1, 140, 2))
        await reported(store, "m1", CoilLevel(9, 90, 1))  # the planogram drops it
        coils = [
            CoilLevel(1, 150, 5, "Choco bar", False, 10, 8),
            CoilLevel(2, 120, 4, "crisps", True, 6, 5),
        ]
        await planograms.save(store, "m1", 3, coils)
        assert await planograms.stored_version(store, "m1") == 3
        assert await store.coils("m1") == [
            CoilLevel(1, 150, 2, "Choco bar", False, 10, 8),  # the event's level is newer
            CoilLevel(2, 120, 4, "crisps", True, 6, 5),
        ]
        # A later event changes price and stock; the planogram's fields stay.
        await reported(store, "m1", CoilLevel(2, 130, 3))
        assert (await store.coils("m1"))[1] == CoilLevel(2, 130, 3, "crisps", True, 6, 5)
        # A new planogram without coil 1; another machine's coils are not touched.
        await reported(store, "m2", CoilLevel(1, 100, 1))
        await planograms.save(store, "m1", 4, [CoilLevel(2, 125, 9, "Crisps", False, 6, 4)])
        assert await store.coils("m1") == [CoilLevel(2, 125, 3, "Crisps", False, 6, 4)]
        assert await store.coils("m2") == [CoilLevel(1, 100, 1)]
        await planograms.save(store, "m1", 5, [])
        assert await store.coils("m1") == []
        assert await planograms.stored_version(store, "m1") == 5
