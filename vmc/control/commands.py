"""The commands vmcd serves on its control socket, over its running services.

Each is one registration in :meth:`DaemonCommands.register`: a name and an async method that
takes the request's :class:`~vmc.control.protocol.Args` (and ``emit`` for a stream) and
returns plain data. What they answer is documented in docs/cli.md (``vmctl`` and the socket
protocol). They read the services' memory and the journal, and change the stock only through
:class:`~vmc.services.local_ops.LocalOps`, the same code as the cloud's commands.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import cbor2

from vmc.cloud import messages as m
from vmc.cloud.outbox import new_id
from vmc.config import Config
from vmc.control.protocol import Args, ControlError, ErrorCode, Json
from vmc.control.server import Emit, Registry
from vmc.control.status import bus_state, status_codes
from vmc.journal import Journal, txn_record
from vmc.monitor import TraceWriter, format_line
from vmc.monitor import to_json as monitor_json
from vmc.sales import Period
from vmc.services.bus import BusSupervisor
from vmc.services.bus_watch import BusWatch
from vmc.services.event_feed import KEEP, EventFeed
from vmc.services.local_ops import LocalOps
from vmc.services.profile_service import ProfileService
from vmc.services.remote_vend import RemoteVending
from vmc.services.service_monitor import ServiceMonitor
from vmc.stock_view import stock_view

if TYPE_CHECKING:
    from vmc.cloud.sync import CloudSync
    from vmc.services.reporter import ReadOutcome, Reporter

DAY_S = 86400.0
MAX_TXNS = 500
TXN_PREFIX = 4
"""``txn show`` takes a unique start of a transaction id of at least this many characters."""
DEX_READ_S = 900.0
"""The longest ``dex.read`` follows a read (a big audit at 1200 baud takes minutes)."""
FOLLOW_POLL_S = 0.2
OPERATION_WAIT_S = 10.0
MAX_MONITOR_FRAMES = 10**9
MAX_SELECTION = 65535
MAX_REF = 256
"""A presented reference is at most this long, like the cloud's ``ref``."""
TEST_VEND_DEFAULT_S = 60
TEST_VEND_MOST_S = 600
"""A test vend's session waits for the customer this long by default, and at most."""
TEST_VEND_SLACK_S = 15.0
"""Beyond the session and the reader's wait for the vend result: the answer's own margin."""


NOT_FOUND = "not_found"


@dataclass
class DaemonCommands:
    """What the commands see of the running daemon (wired once, by ``run_daemon``)."""

    config: Config
    journal: Journal
    bus: BusSupervisor
    watch: BusWatch
    ops: LocalOps
    feed: EventFeed
    service: ServiceMonitor
    reporter: Reporter | None
    sync: CloudSync | None
    socket_path: Path
    vending: RemoteVending
    """The engine's glue, with or without a cloud: test vends are its sessions."""
    profile: ProfileService
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    started: float = field(init=False)
    started_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.started, self.started_at = self.monotonic(), self.clock()

    def register(self, registry: Registry) -> None:
        registry.add("commands", self.commands(registry), help="the commands served here")
        registry.add("status", self.status, help="the daemon, bus, cloud, reporter, stock")
        registry.add("txn.list", self.txn_list, help="transactions: the last ones, or from a day")
        registry.add("txn.show", self.txn_show, help="one transaction, its history and refunds")
        registry.add("events", self.events, help="the last events queued or booked")
        registry.add_stream("events.follow", self.events_follow, help="the last, then new ones")
        registry.add("stock.show", self.stock_show, help="the stock, as vmctl stock show")
        registry.add("planogram.show", self.planogram_show, help="the planogram in force")
        registry.add(
            "operation",
            self.operation,
            help="apply planogram.set or stock.refill|inventory|restock",
            timeout_s=OPERATION_WAIT_S,
        )
        registry.add_stream(
            "dex.read",
            self.dex_read,
            help="read the audit now (progress, then the audit)",
            timeout_s=DEX_READ_S,
        )
        registry.add_stream(
            "mdb.monitor",
            self.mdb_monitor,
            help="the bus's exchanges as they happen, decoded, with their trace lines",
        )
        registry.add(
            "test_vend",
            self.test_vend,
            help="a real test vend of one selection, approved by the machine at 0",
            timeout_s=TEST_VEND_MOST_S + self.config.reader.vend_result_timeout + TEST_VEND_SLACK_S,
        )
        registry.add(
            "present",
            self.present,
            help="a customer's reference (badge, card) presented on the machine",
        )
        registry.add("selftest", self.selftest, help="what vmc learned about this machine")

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.config.daemon.timezone)

    def _money(self) -> dict[str, Any]:
        reader = self.config.reader
        return {
            "timezone": self.config.daemon.timezone,
            "currency": reader.currency,
            "decimals": reader.minor_decimals,
        }

    @staticmethod
    def commands(registry: Registry) -> Callable[[Args], Any]:
        async def listed(_args: Args) -> Json:
            return [
                {"name": c.name, "stream": c.stream is not None, "help": c.help}
                for c in registry.commands()
            ]

        return listed

    # --- status ---------------------------------------------------------------------------------

    async def status(self, _args: Args) -> Json:
        from importlib.metadata import version  # only when asked: see vmc.daemon's _Version

        now = self.clock()
        service = self.service.state()
        status: dict[str, Any] = {
            "version": version("vmc"),
            "uptime_s": round(self.monotonic() - self.started, 1),
            "started_at": self.started_at,
            "pid": os.getpid(),
            "state_dir": str(self.config.daemon.state_dir),
            "control_socket": str(self.socket_path),
            "timezone": self.config.daemon.timezone,
            "decisions": "cloud"
            if self.sync is not None
            else f"local_{self.config.mdb.local_approval}",
            "operating_state": service.pop("operating_state"),
            "service": service,
            "bus": self._bus(),
            "cloud": self._cloud(now),
            "reporter": self._reporter(),
            "stock": self._stock(),
            "storage": self._storage(),
        }
        status["codes"] = status_codes(status)
        return status

    def _storage(self) -> dict[str, Any] | None:
        storage = self.vending.storage
        if storage is None:
            return None
        return {"path": str(storage.directory), **storage.view()}

    def _bus(self) -> dict[str, Any]:
        bus, watch = self.bus, self.watch
        shown = bus.status()
        configured = watch.configured
        age = watch.last_poll_age()
        reader_for = watch.reader_for()
        return {
            "protocol": "exe" if self.config.executive else "mdb",
            "state": bus_state(bus.state, bus.healthy(), shown.link_up, watch.reader).value,
            "text": shown.text,
            "port": bus.port_url,
            "link_up": shown.link_up,
            "last_poll_age_s": None if age is None else round(age, 3),
            "polls": None if watch.heartbeat is None else watch.heartbeat.polls,
            "reader": None if watch.reader is None else watch.reader.name.lower(),
            "reader_for_s": None if reader_for is None else round(reader_for, 1),
            "restarts": bus.restarts,
            "realtime": watch.realtime,
            "protocol_violations": watch.protocol_violations,
            "vmc": {
                "level": None if configured is None else configured.vmc_level,
                "operating_level": None if configured is None else configured.operating_level,
                "display": None
                if configured is None or not configured.columns
                else f"{configured.columns}x{configured.rows}",
                "options": watch.options(),
                "max_price": None if watch.prices is None else watch.prices.max_price,
                "min_price": None if watch.prices is None else watch.prices.min_price,
            },
        }

    def _cloud(self, now: float) -> dict[str, Any]:
        oldest = self.journal.outbox_oldest()
        outbox = {
            "outbox": self.journal.outbox_size(),
            "oldest_unsent_age_s": None if oldest is None else round(max(0.0, now - oldest), 1),
        }
        sync = self.sync
        if sync is None:
            return {"state": "not_configured", **outbox}
        return {
            "state": "connected" if sync.connected.is_set() else "offline",
            "url": sync.settings.url,
            "device_id": sync.settings.device_id,
            "since": sync.since,
            "for_s": round(max(0.0, now - sync.since), 1),
            "last_error": sync.last_error,
            "delivered": sync.delivered,
            **outbox,
        }

    def _reporter(self) -> dict[str, Any]:
        reporter = self.reporter
        if reporter is None:
            return {"state": "not_configured"}
        last = reporter.last_read
        return {
            "state": "reading" if reporter.reading else "idle",
            "port": self.config.dex.port,
            "protocol": self.config.dex.protocol,
            "last_read": None if last is None else _read_json(last),
            **reporter.timestamps(),
        }

    def _stock(self) -> dict[str, Any]:
        view = stock_view(self.ops.stock.stock)
        counted = [r for r in (*view["selections"], *view["ingredients"]) if r["condition"]]
        return {
            "planogram_version": view["planogram_version"],
            "need_loading": view["need_loading"],
            "selections": len(view["selections"]),
            "ingredients": len(view["ingredients"]),
            "low": sum(r["condition"] == "low" for r in counted),
            "empty": sum(r["condition"] == "empty" for r in counted),
            "last_loading": view["last_loading"],
            "last_sale": view["last_sale"],
        }

    # --- transactions -------------------------------------------------------------------------

    async def txn_list(self, args: Args) -> Json:
        limit = args.integer("limit", default=20, low=1, high=MAX_TXNS)
        first = args.text("from", most=10)
        if first is None:
            rows = self.journal.latest_txns(limit + 1)
            page = rows[:limit][::-1]  # oldest first, as a log reads
        else:
            try:
                day = dt.date.fromisoformat(first)
            except ValueError:
                wrong = f"from: {first!r} is not a date (YYYY-MM-DD)"
                raise ControlError(ErrorCode.BAD_ARGS, wrong) from None
            since = Period(day, day, self.zone).since
            rows = self.journal.txns_created(since, self.clock() + DAY_S, None, limit + 1, None)
            page = rows[:limit]
        return {
            **self._money(),
            "from": first,
            "decisions": "cloud" if self.sync is not None else "local",
            "txns": [txn_record(t, r) for t, r in page],
            "more": len(rows) > limit,
        }

    async def txn_show(self, args: Args) -> Json:
        wanted = args.text("txn_id", required=True, most=128)
        assert wanted is not None
        txn = self.journal.txn(wanted)
        if txn is None:
            found = self.journal.txn_ids_starting(wanted, 2) if len(wanted) >= TXN_PREFIX else []
            if len(found) > 1:
                raise ControlError(
                    ErrorCode.BAD_ARGS, f"{wanted!r} starts several transaction ids; give more"
                )
            txn = self.journal.txn(found[0]) if found else None
        if txn is None:
            days = self.config.daemon.sales_retention_days
            raise ControlError(
                NOT_FOUND,
                f"no transaction {wanted!r} in the journal (never seen, or closed more than"
                f" {days} days ago)",
            )
        refunds = self.journal.refunds_of(txn.txn_id)
        return {
            **self._money(),
            "txn": txn_record(txn, sum(r.amount for r in refunds)),
            "history": [
                {"at": at, "state": step.state.value, "reason": step.reason or None}
                for at, step in self.journal.txn_log(txn.txn_id)
            ],
            "refunds": [
                {"refund_id": r.refund_id, "at": r.at, "amount": r.amount, "reason": r.reason}
                for r in refunds
            ],
        }

    # --- events ---------------------------------------------------------------------------------

    async def events(self, args: Args) -> Json:
        limit = args.integer("limit", default=20, low=0, high=KEEP)
        return {
            "timezone": self.config.daemon.timezone,
            "cloud": self.sync is not None,
            "items": [item.to_json() for item in self.feed.recent(limit)],
        }

    async def events_follow(self, args: Args, emit: Emit) -> Json:
        limit = args.integer("limit", default=20, low=0, high=KEEP)
        with self.feed.follow() as follower:  # before the recent ones: nothing falls between
            for item in self.feed.recent(limit):
                await emit(item.to_json())
            while True:
                items, dropped = await follower.take()
                if dropped:
                    await emit({"kind": "gap", "dropped": dropped})
                for item in items:
                    await emit(item.to_json())

    # --- stock ----------------------------------------------------------------------------------

    async def stock_show(self, _args: Args) -> Json:
        return stock_view(self.ops.stock.stock)

    async def planogram_show(self, _args: Args) -> Json:
        planogram = self.ops.stock.stock.planogram
        return None if planogram is None else planogram.to_mapping()

    async def operation(self, args: Args) -> Json:
        return self.ops.apply(args.mapping("command")).to_json()

    # --- the bus, test vends, the machine's profile --------------------------------------------

    async def mdb_monitor(self, args: Args, emit: Emit) -> Json:
        """Each exchange as the bus process saw it (``count`` of them, 0: until the client
        goes): decoded, as a human line, and as trace lines for ``vmctl mdb record``."""
        count = args.integer("count", default=0, low=0, high=MAX_MONITOR_FRAMES)
        sent = 0
        async with self.bus.monitor() as frames:
            async for frame in frames:
                trace = io.StringIO()
                TraceWriter(trace).write(frame)
                line = format_line(frame, self.zone)
                await emit({**monitor_json(frame), "line": line, "trace": trace.getvalue()})
                sent += 1
                if sent == count:
                    break
        return {"frames": sent}

    async def test_vend(self, args: Args) -> Json:
        selection = args.integer("selection", low=0, high=MAX_SELECTION)
        timeout = args.integer(
            "timeout_s", default=TEST_VEND_DEFAULT_S, low=1, high=TEST_VEND_MOST_S
        )
        outcome = await self.vending.test_vend(selection, float(timeout))
        return outcome.to_json()

    async def present(self, args: Args) -> Json:
        ref = args.text("ref", required=True, most=MAX_REF)
        assert ref is not None
        return {**self.vending.present(ref), "decimals": self.config.reader.minor_decimals}

    async def selftest(self, _args: Args) -> Json:
        return {**self.profile.profile(), "decimals": self.config.reader.minor_decimals}

    # --- DEX ------------------------------------------------------------------------------------

    async def dex_read(self, _args: Args, emit: Emit) -> Json:
        """Ask for a read (or join the one running), tell its progress, then its result with
        the raw audit (base64), as the data request's row has them."""
        command = {
            "id": new_id(),
            "op": m.Op.DATA_REQUEST.value,
            "report": True,
            "expires": self.clock() + OPERATION_WAIT_S,
        }
        reply = self.ops.apply(command).reply
        if not reply["ok"]:
            raise ControlError(str(reply["code"]), str(reply["message"]))
        accepted = reply["result"]
        await emit({"accepted": accepted})
        request_id = accepted["request_id"]
        shown: tuple[int, int] | None = None
        while True:
            row = self.journal.data_request(request_id)
            if row is not None and row.done:
                assert row.result is not None  # a local request's result is always kept
                result: dict[str, Any] = cbor2.loads(row.result)
                break
            if row is not None and (row.received, row.blocks) != shown:
                shown = (row.received, row.blocks)
                await emit({"progress": {"received": row.received, "blocks": row.blocks}})
            await asyncio.sleep(FOLLOW_POLL_S)
        file = result.get("file")
        audit = None
        if result.get("ok") and file:
            try:
                audit = base64.b64encode(Path(file).read_bytes()).decode("ascii")
            except OSError as exc:
                why = f"cannot read the audit {file}: {exc.strerror}"
                raise ControlError("no_audit", why) from None
        return {**result, "audit": audit}


def _read_json(outcome: ReadOutcome) -> dict[str, Any]:
    names = ("read_id", "at", "ok", "valid", "size", "step", "reason")
    return {name: getattr(outcome, name) for name in names}
