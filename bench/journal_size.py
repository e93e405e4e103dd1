#!/usr/bin/env python3
"""The journal's size after ``--days`` days of ``--per-day`` sales, filled through the real code.

Every sale goes through :class:`vmc.services.remote_vend.RemoteVending` as in ``vmcd``: a share
``--cashless`` of them as select-first cashless vends (VEND REQUEST from the bus, the backend's
``paid`` command as CBOR, VEND APPROVED, VEND SUCCESS, session end: transitions, txn log,
outbox events, the command's stored reply, the stock taken and the sales row), the rest as cash
sales the VMC reports. A planogram is pushed and the machine restocked to par each morning with
``stock.restock``, every seventh morning with a cash collection (``collect``) and its report
(no DEX port). The clock is simulated; each evening the outbox counts as delivered (a device
online) and the daemon's prune runs (command ids after 7 days; sales, closed transactions,
stock history and op ids, collections after ``--retention-days``). Prints one JSON object: the
file's bytes after a checkpoint, the bytes of each table and the rows of the growing ones.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import cbor2

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocols.mdb import events as ev  # noqa: E402
from vmc.cloud.outbox import new_id  # noqa: E402
from vmc.cloud.topics import Topics  # noqa: E402
from vmc.daemon import DAY_S, prune_journal  # noqa: E402
from vmc.journal import Journal  # noqa: E402
from vmc.logs import configure_logging  # noqa: E402
from vmc.services.collector import Collector  # noqa: E402
from vmc.services.remote_vend import RemoteVending  # noqa: E402
from vmc.services.stock_book import StockBook  # noqa: E402
from vmc.transaction import Engine, EngineConfig, Money  # noqa: E402

SELECTIONS = 30
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PLANOGRAM = {
    "version": 1,
    "products": [{"id": f"p{n}"} for n in range(SELECTIONS)],
    "selections": [
        {
            "number": n,
            "product": f"p{n}",
            "price": 100 + 10 * n,
            "capacity": 40,
            "par_level": 40,
            "alarm_level": 5,
        }
        for n in range(SELECTIONS)
    ],
}


GROWING = ("sales", "txns", "txn_log", "stock_ops", "stock_history", "collections", "commands")
"""The tables that gain rows with every sale or operation (the prune keeps them bounded)."""


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _command(op: str, clock: Clock, **fields: Any) -> bytes:
    body = {"v": 1, "id": new_id(), "op": op, "expires": clock.now + 30, **fields}
    return cbor2.dumps(body)


def _cashless(remote: RemoteVending, vend_id: int, item: int, price: int, clock: Clock) -> None:
    remote.handle_bus(ev.VendRequested(vend_id, item, price))
    txn = remote.engine.txn
    assert txn is not None
    remote.handle_command(_command("paid", clock, txn_id=txn.txn_id, amount=price))
    remote.handle_bus(ev.VendApprovedSent(vend_id, price))
    remote.handle_bus(ev.VendSucceeded(vend_id, item, price))
    remote.handle_bus(ev.SessionEnded())


def fill(path: Path, args: argparse.Namespace) -> None:
    clock = Clock()
    journal = Journal(path, clock=clock)
    topics = Topics("bench")
    money = Money(978, 2)
    collector = Collector(journal, topics, money, None, clock=clock)
    stock = StockBook(journal, topics, collector, clock=clock)
    engine = Engine(EngineConfig(money), new_id)
    engine.always_idle = True
    remote = RemoteVending(engine, journal, topics, lambda _command: True, clock=clock, stock=stock)
    remote.handle_command(_command("planogram.set", clock, planogram=PLANOGRAM))
    rng = random.Random(1)
    vend_id = 0
    for day in range(args.days):
        clock.now = START + day * DAY_S + 6 * 3600
        remote.handle_command(_command("stock.restock", clock, collect=day % 7 == 0))
        asyncio.run(collector.report_pending())
        for _ in range(args.per_day):
            clock.now += 12 * 3600 / args.per_day
            item = rng.randrange(SELECTIONS)
            price = 100 + 10 * item
            vend_id = vend_id % 65535 + 1
            if rng.random() < args.cashless:
                _cashless(remote, vend_id, item, price, clock)
            else:
                remote.handle_bus(ev.CashSaleReported(item, price))
        if sent := journal.pending(10**9):  # the broker acknowledged all of it
            journal.delivered_through(sent[-1].seq)
        prune_journal(journal, clock.now, args.retention_days)
    journal.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "journal.sqlite3"
        fill(path, args)
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            tables = dict(
                db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
            )
            rows = {
                table: int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
                for table in GROWING
            }
        return {
            "days": args.days,
            "sales_per_day": args.per_day,
            "cashless_share": args.cashless,
            "retention_days": args.retention_days,
            "rows": rows,
            "journal_bytes": path.stat().st_size,
            "table_bytes": tables,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--per-day", type=int, default=100)
    p.add_argument("--cashless", type=float, default=0.5, help="share of cashless sales")
    p.add_argument("--retention-days", type=int, default=90, help="[daemon] sales_retention_days")
    configure_logging("warning")
    print(json.dumps(measure(p.parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
