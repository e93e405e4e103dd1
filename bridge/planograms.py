"""Each machine's planogram, for the coils the feeds carry (names, capacities, par levels).

The contract's events give a coil's price and stock, not its planogram. The machine's retained
``state`` names the planogram in force (``planogram_version``, republished after every stock
operation and on every connect); when it names one the store has not filled the coils from,
the bridge asks the machine with ``stock.query`` (a read, which needs no signature) and keeps
the answer. A bridge that starts after the planogram was pushed, a ``planogram.set`` from any
backend and a technician's ``vmctl planogram set`` are all caught the same way. The answer is
kept in the store's ``planograms`` and ``planogram_coils`` tables, which ``SqlStore.coils``
joins to the coils the events keep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from bridge import mapping
from bridge.fleet import Fleet
from bridge.link import Link, new_command_id
from bridge.store import CoilLevel, SqlStore
from vmc.cloud import messages as m

log = structlog.get_logger("bridge.planograms")


class Planograms:
    def __init__(self, store: SqlStore, link: Link, fleet: Fleet) -> None:
        self.store = store
        self.link = link
        self.fleet = fleet
        self.known: dict[str, int] = {}
        """machine -> the planogram version its coils were filled from."""
        self._asking: set[str] = set()
        self._wanted: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        fleet.listeners.append(self.seen)

    def seen(self, machine: str) -> None:
        """The machine's status or state changed: ask for a planogram the coils lack, once at
        a time per machine, while it is online."""
        version = self.fleet.state.get(machine, {}).get("planogram_version")
        if type(version) is not int or self.known.get(machine) == version:
            return
        view = self.fleet.view(machine)
        if view is None or not view.online or machine in self._asking:
            return
        self._asking.add(machine)
        self._wanted.put_nowait((machine, version))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            while True:
                machine, version = await self._wanted.get()
                group.create_task(self._fill(machine, version))

    async def _fill(self, machine: str, version: int) -> None:
        try:
            if await stored_version(self.store, machine) != version:
                await self._read(machine, version)
            else:
                self.known[machine] = version
        except Exception:
            log.exception("planogram_failed", machine=machine)
        finally:
            self._asking.discard(machine)

    async def _read(self, machine: str, version: int) -> None:
        """Ask the machine; a machine that does not answer is asked again at its next state,
        one that refuses (a vmc without ``stock.query``) not before its next planogram."""
        reply = await self.link.command(machine, m.Op.STOCK_QUERY, {}, command_id=new_command_id())
        if reply is None:
            log.warning("planogram_no_reply", machine=machine)
            return
        result = reply.get("result")
        if not reply.get("ok") or not isinstance(result, dict):
            log.warning("planogram_refused", machine=machine, code=reply.get("code"))
            self.known[machine] = version
            return
        answered = result.get("planogram_version")  # newer than the state that asked, maybe
        version = answered if type(answered) is int else version
        await save(self.store, machine, version, mapping.planogram_coils(result))
        self.known[machine] = version
        log.info("planogram_filled", machine=machine, version=version)


async def stored_version(store: SqlStore, machine: str) -> int | None:
    """The version of the machine's planogram its coils were last filled from."""
    async with store.tx() as tx:
        rows = await tx.fetch("SELECT version FROM planograms WHERE machine = ?", machine)
    return int(rows[0][0]) if rows else None


async def save(store: SqlStore, machine: str, version: int, coils: Sequence[CoilLevel]) -> None:
    """The machine's planogram in force, in one commit: its coils replace the old ones (a coil
    it no longer has is dropped), their price is the planogram's until a request says
    otherwise, and their stock is taken only where no ``stock.level`` gave one yet (an event
    is newer than the query's answer)."""
    codes = ", ".join(str(int(c.code)) for c in coils)  # integers: written as they are
    async with store.tx() as tx:
        await tx.execute(
            "INSERT INTO planograms (machine, version) VALUES (?, ?)"
            " ON CONFLICT (machine) DO UPDATE SET version = excluded.version",
            machine,
            version,
        )
        await tx.execute("DELETE FROM planogram_coils WHERE machine = ?", machine)
        gone = f" AND code NOT IN ({codes})" if codes else ""
        await tx.execute(f"DELETE FROM coils WHERE machine = ?{gone}", machine)
        for c in coils:
            await tx.execute(
                "INSERT INTO planogram_coils (machine, code, name, placeholder, capacity,"
                " restock_count) VALUES (?, ?, ?, ?, ?, ?)",
                machine,
                c.code,
                c.name,
                c.placeholder,
                c.capacity,
                c.restock_count,
            )
            await tx.execute(
                "INSERT INTO coils (machine, code, price, current_stock) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (machine, code) DO UPDATE SET"
                " price = COALESCE(excluded.price, coils.price),"
                " current_stock = COALESCE(coils.current_stock, excluded.current_stock)",
                machine,
                c.code,
                c.price,
                c.current_stock,
            )
