"""vmcd: the machine-side daemon.

It holds ``<state_dir>/vmcd.lock`` for its lifetime (:mod:`vmc.state_lock`): one vmcd per state
directory, and ``vmctl`` knows whether to apply a stock operation itself or leave it to vmcd
(:mod:`vmc.services.local_ops`). It serves ``vmctl`` on its control socket (:mod:`vmc.control`).
One asyncio TaskGroup: the MDB bus supervisor (its process answers the VMC), the control
socket, the ticker (the service state's changes with time; with a cloud, deadlines) and the
systemd watchdog. Expected faults are retried inside each service; anything unexpected ends
the group and the process exits non-zero, for systemd to restart it. SIGTERM or SIGINT ends it
with 0 within :data:`STOP_BUDGET_S`, whatever it is doing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import structlog

from protocols.errors import ConfigError
from protocols.mdb.events import State
from vmc import gc_pauses
from vmc.clock import SteadyClock, wall_clock
from vmc.cloud.outbox import new_id
from vmc.cloud.signing import CommandKeys
from vmc.cloud.topics import Topics
from vmc.config import (
    APPROVAL_POLICIES,
    SOCKET_NAME,
    Config,
    check_host,
    control_socket_path,
    load_config,
)
from vmc.control import server as control
from vmc.control.commands import DaemonCommands
from vmc.credit import credit_state
from vmc.data_request import Machine
from vmc.journal import JOURNAL_NAME, Journal, StorageFullError
from vmc.launch import quiet_early_stops
from vmc.logs import configure_logging
from vmc.services.bus import BusProgram, BusStatus, BusSupervisor
from vmc.services.bus_messages import BusCommand, Ready
from vmc.services.bus_watch import BusWatch
from vmc.services.collector import Collector
from vmc.services.data_service import KEEP_S as DATA_REQUEST_KEEP_S
from vmc.services.data_service import DataService, machine_config
from vmc.services.event_feed import EventFeed
from vmc.services.local_ops import LocalOps
from vmc.services.price_feed import PriceFeed
from vmc.services.profile_service import ProfileService
from vmc.services.remote_vend import RemoteVending
from vmc.services.service_monitor import ServiceMonitor
from vmc.services.stock_book import StockBook
from vmc.services.vending import LocalVending
from vmc.state_lock import StateDirBusyError, hold
from vmc.storage import StorageGuard
from vmc.systemd import notify, watchdog_interval
from vmc.transaction import Engine, EngineConfig, Money

if TYPE_CHECKING:
    # Imported where configured: the MQTT client with --mqtt, the DEX stack with a DEX port.
    from vmc.cloud.sync import CloudSync
    from vmc.services.reporter import Reporter

log = structlog.get_logger("vmc.daemon")

TICK_S = 0.1
STATUS_EVERY_S = 1.0
"""How often the bus status is looked at for STATUS= (more often if the watchdog asks)."""
STOP_BUDGET_S = 3.0
"""SIGTERM/SIGINT to exit, in every state; far inside the unit's TimeoutStopSec=15."""
STOP_STEPS_S = STOP_BUDGET_S - 0.5
"""The orderly part of a stop: the bus process voids what is undecided and exits, the cloud
hears ``offline``. What still runs then is cancelled (the bus process killed) in the rest."""
PRUNE_EVERY_S = 3600.0
CHECKPOINT_EVERY_S = 1.0
"""How often the journal's WAL is copied back into the database, off the event loop."""
LOCK_WAIT_S = 3.0
"""How long a starting vmcd waits for the state directory's lock: a vmctl applying a stock
operation holds it for a moment; another vmcd holds it for good."""
DAY_S = 86400
COMMAND_MEMORY_S = 7 * DAY_S
"""How long a command id is remembered with its reply (its ``expires`` has long passed)."""


def _address(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; use 0x10 or 0x60") from None


class _Version(argparse.Action):
    """``--version``, with the installed version looked up only when asked: importlib.metadata
    costs a starting vmcd tens of milliseconds and about 2 MB."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(nargs=0, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib.metadata import version

        print(f"vmcd {version('vmc')}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmcd", description="vmc machine-side daemon")
    p.add_argument("--version", action=_Version, help="show vmcd's version and exit")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--mdb", help="MDB port URL: uart:///dev/ttyAMA0, pty:///dev/pts/N, loop://N")
    p.add_argument("--exe", help="Executive port URL (vmc as the EXE master instead of --mdb)")
    p.add_argument("--mdb-address", type=_address, help="cashless address: 0x10 or 0x60")
    p.add_argument("--level", type=int, help="reader feature level: 1, 2 or 3")
    p.add_argument("--state-dir", help="directory for the journal")
    p.add_argument("--local-approval", choices=APPROVAL_POLICIES, help="decide vends locally")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument("--mqtt", help="broker URL: mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--device-id", help="this machine's id in the topic tree")
    p.add_argument("--dex", help="DEX port URL for audit reads: uart:///dev/ttyUSB0, pty://...")
    p.add_argument("--dex-protocol", choices=("ucs", "ddcmp"), help="DEX link protocol")
    p.add_argument(
        "--control-socket",
        help="vmctl's socket (default: $RUNTIME_DIRECTORY/vmcd.sock, else STATE_DIR/vmcd.sock)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "mdb.port": args.mdb,
        "exe.port": args.exe,
        "mdb.address": args.mdb_address,
        "mdb.level": args.level,
        "mdb.local_approval": args.local_approval,
        "daemon.state_dir": args.state_dir,
        "daemon.log_level": args.log_level,
        "cloud.url": args.mqtt,
        "cloud.device_id": args.device_id,
        "dex.port": args.dex,
        "dex.protocol": args.dex_protocol,
        "daemon.control_socket": args.control_socket,
    }
    config = load_config(args.config, overrides)
    if config.bus_port is None:
        raise ConfigError(
            "mdb.port: no payment bus; give --mdb URL (MDB) or --exe URL (Executive),"
            " or set port in [mdb] or [exe]"
        )
    return config


@dataclass
class CloudServices:
    remote: RemoteVending
    sync: CloudSync
    service: ServiceMonitor
    stock: StockBook
    collector: Collector


def _engine(config: Config, stock: Callable[[], StockBook]) -> Engine:
    """The transaction engine, priced by the planogram of ``stock()`` (bound late)."""
    reader = config.reader

    def prices() -> Mapping[int, int] | None:
        planogram = stock().stock.planogram
        return None if planogram is None else planogram.prices()

    exe = config.executive
    return Engine(
        EngineConfig(
            Money(reader.currency, reader.minor_decimals),
            approval_timeout=config.exe.approval_timeout if exe else reader.approval_timeout,
            lock_timeout=config.cloud.lock_timeout,
        ),
        new_id,
        prices=prices,
    )


def _cloud_services(
    config: Config,
    journal: Journal,
    send: Callable[[BusCommand], bool],
    reporter: Reporter | None,
    link_up: Callable[[], bool],
    *,
    data: DataService,
    profile: ProfileService,
    storage: StorageGuard,
) -> CloudServices:
    from vmc.cloud.sync import CloudSync, MqttSettings

    cloud = config.cloud
    assert cloud.url is not None
    assert cloud.device_id is not None
    settings = MqttSettings(
        url=cloud.url,
        device_id=cloud.device_id,
        username=cloud.username,
        password=cloud.password,
        ca_file=cloud.ca_file,
        cert_file=cloud.cert_file,
        key_file=cloud.key_file,
        keepalive=cloud.keepalive,
        mqtt_version=cloud.mqtt_version,
        topic_prefix=cloud.topic_prefix,
        device_key_file=cloud.device_key_file,
    )
    reader = config.reader
    engine = _engine(config, lambda: stock)
    remote: RemoteVending
    topics = Topics(settings.device_id, settings.topic_prefix)
    stock: StockBook
    service: ServiceMonitor
    collector: Collector

    def state() -> dict[str, Any]:
        txn = engine.txn
        return {
            "reader": engine.reader_state.name.lower(),
            "always_idle": engine.always_idle,
            "txn": None if txn is None else {"txn_id": txn.txn_id, "state": txn.state.value},
            "credit": None if engine.credit is None else credit_state(engine.credit),
            "mdb_link": "up" if link_up() else "down",
            "storage": "full" if storage.full else "ok",
            "at": time.time(),
            **(reporter.timestamps() if reporter is not None else {}),
            **stock.state(),
            **service.state(),
            **collector.state(),
            "offline": remote.offline_state(),
        }

    def on_command(payload: bytes) -> None:
        remote.handle_command(payload)  # bound late: the sync must exist first

    def machine() -> Machine:
        txn = engine.txn
        return Machine(
            link_up(),
            engine.reader_state,
            None if txn is None else txn.txn_id,
            None if txn is None else txn.state.value,
        )

    sync = CloudSync(settings, journal, on_command, state)
    journal.on_commit.append(sync.committed)
    collector = Collector(
        journal,
        topics,
        engine.config.money,
        reporter,
        on_outbox=sync.wake,
        on_state=sync.state_changed,
    )
    stock = StockBook(journal, topics, collector, on_outbox=sync.wake, on_state=sync.state_changed)
    service = ServiceMonitor(
        config.service,
        journal,
        link_up=link_up,
        reader=lambda: engine.reader_state,
        stock_service=lambda: stock.stock.last_service_at,
        decimals=reader.minor_decimals,
        on_state=sync.state_changed,
    )
    remote = RemoteVending(
        engine,
        journal,
        topics,
        send,
        clock=wall_clock(),
        on_outbox=sync.wake,
        on_state=sync.state_changed,
        stock=stock,
        zone=ZoneInfo(config.daemon.timezone),
        data=data,
        keys=CommandKeys.from_config(config.cloud.command_keys),
        offline=config.offline,
        online=sync.connected.is_set,
        storage=storage,
    )
    storage.on_change = sync.state_changed
    _steady(remote)
    if reporter is not None:
        reporter.attach(topics, sync.wake, sync.state_changed)
    data.attach(topics, sync.wake, machine)
    profile.attach(topics, sync.wake)
    return CloudServices(remote, sync, service, stock, collector)


def _steady(vending: RemoteVending) -> None:
    """Its clock held steady while its engine has something open (see :mod:`vmc.clock`)."""
    clock = SteadyClock(vending.clock)
    clock.holding = lambda: vending.busy
    vending.clock = clock


def _bus_program(config: Config) -> BusProgram:
    """The bus process this machine needs: the Executive master or the MDB cashless device."""
    exe = config.exe
    if config.executive:
        settings = dataclasses.asdict(exe.settings)
        return BusProgram.exe(settings, exe.mode_bit, exe.silent_after, exe.realtime_priority)
    return BusProgram.mdb(config.reader, config.mdb.realtime_priority)


async def run_daemon(config: Config, listener: socket.socket, socket_path: Path) -> int:
    """Serve until SIGTERM or SIGINT; ``listener`` is the bound control socket."""
    port = config.bus_port
    assert port is not None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # first: a stop during start-up is a stop too
    # The bus process starts before the services are built, so its start overlaps theirs:
    # the VMC's RESET after a power cut is answered sooner. It serves the VMC on its own;
    # its reports wait in their socket until the supervisor runs.
    bus = BusSupervisor(port, _bus_program(config), lambda report: None)
    await bus.spawn()
    try:
        return await _serve(config, listener, socket_path, bus, stop)
    finally:
        await bus.discard()  # nothing to do once the supervisor took the process over


async def _serve(
    config: Config,
    listener: socket.socket,
    socket_path: Path,
    bus: BusSupervisor,
    stop: asyncio.Event,
) -> int:
    exe = config.executive
    loop = asyncio.get_running_loop()
    # The guard first: on a full filesystem it gives back the room the journal needs to open.
    storage = StorageGuard(config.daemon.state_dir)
    storage.start()
    path = config.daemon.state_dir / JOURNAL_NAME
    try:
        journal = Journal(path)
    except sqlite3.DatabaseError as exc:  # a directory in its place, a file that is no journal
        raise ConfigError(
            f"daemon.state_dir: {path} cannot be opened as the journal ({exc});"
            " move it away to start a new one"
        ) from exc
    journal.on_full = storage.write_failed
    try:
        journal.skip_seqs()
    except StorageFullError:  # the skip guards a rare case: not worth a daemon that cannot start
        log.warning("seq_skip_failed", reason="storage_full")
    feed = EventFeed()
    journal.on_commit.append(feed.committed)
    watch = BusWatch()
    send = bus.send

    def link_up() -> bool:
        return bus.status().link_up

    reporter = None
    if config.dex.port is not None:
        from vmc.services.audit_store import AuditStore
        from vmc.services.reporter import Reporter

        store = AuditStore(config.daemon.state_dir / "audits", config.dex.keep)
        zone = ZoneInfo(config.daemon.timezone)
        reporter = Reporter(config.dex, journal, store, None, zone=zone)
    stock: StockBook

    def describe() -> dict[str, Any]:
        return machine_config(config, stock.stock.planogram)  # bound late: the stock comes next

    data = DataService(journal, reporter, describe)
    # What vmc learns about the machine: from every bus report and every audit read.
    profile = ProfileService(journal, config.dex.protocol if config.dex.port else None)
    if reporter is not None:
        reporter.listeners.append(profile.read_done)
    cloud = (
        _cloud_services(
            config, journal, send, reporter, link_up, data=data, profile=profile, storage=storage
        )
        if config.cloud.url
        else None
    )
    # Without a cloud the stock is kept all the same; nothing is queued for a cloud then.
    stock = cloud.stock if cloud is not None else StockBook(journal, None)
    # The engine's glue: with a cloud it decides every vend; without one, the machine's own
    # sessions (test vends) beside the local policy.
    vending = (
        cloud.remote
        if cloud is not None
        else RemoteVending(
            _engine(config, lambda: stock),
            journal,
            None,
            send,
            clock=wall_clock(),
            stock=stock,
            zone=ZoneInfo(config.daemon.timezone),
            storage=storage,
        )
    )
    if cloud is None:
        _steady(vending)
    vending.vend_result_timeout = (
        config.exe.vend_timeout if exe else config.reader.vend_result_timeout
    )
    local = LocalVending(
        config.mdb.local_approval == "accept",
        journal,
        send,
        stock,
        machine=None if cloud is not None else vending,
        storage=storage,
    )
    service = (
        cloud.service
        if cloud is not None
        else ServiceMonitor(
            config.service,
            journal,
            link_up=link_up,
            reader=lambda: watch.reader or State.INACTIVE,
            stock_service=lambda: stock.stock.last_service_at,
            decimals=config.reader.minor_decimals,
        )
    )
    decide = cloud.remote.handle_bus if cloud is not None else local.handle
    # Executive price holding: the planogram's prices go to the bus process.
    prices = PriceFeed(lambda: stock.stock.planogram, send) if config.exe.price_holding else None

    def on_report(report: object) -> None:
        watch.observe(report)
        decide(report)
        if not exe:
            profile.handle_bus(report)  # the compatibility profile knows MDB only
        elif prices is not None and isinstance(report, Ready):
            prices.ready()

    bus.on_report = on_report  # before the supervisor runs: no report is read until then
    registry = control.Registry()
    DaemonCommands(
        config,
        journal,
        bus,
        watch,
        LocalOps(journal, stock, data),
        feed,
        service,
        reporter,
        None if cloud is None else cloud.sync,
        socket_path,
        vending,
        profile,
    ).register(registry)
    vending.recover()
    data.recover()
    if reporter is not None:
        loop.add_signal_handler(signal.SIGUSR1, reporter.request_read, "signal")
    gc_pauses.take_over()
    log.info(
        "vmcd_started",
        bus="exe" if exe else "mdb",
        port=bus.port_url,
        address=None if exe else hex(config.mdb.address),
        mdb_level=None if exe else config.mdb.level,
        decisions="cloud" if cloud is not None else f"local_{config.mdb.local_approval}",
        mqtt=config.cloud.url,
        device_id=config.cloud.device_id,
        dex=config.dex.port,
        state_dir=str(config.daemon.state_dir),
        control_socket=str(socket_path),
    )
    try:
        async with asyncio.TaskGroup() as group:
            supervisor = group.create_task(bus.run(), name="bus-supervisor")
            on_link = cloud.sync.state_changed if cloud is not None else lambda: None
            helpers = [
                group.create_task(_watchdog(bus, on_link), name="watchdog"),
                group.create_task(
                    _pruner(journal, config.daemon.sales_retention_days), name="journal-prune"
                ),
                group.create_task(_checkpointer(journal), name="journal-checkpoint"),
                group.create_task(
                    _ticker(service, vending, profile, prices, storage), name="ticker"
                ),
                group.create_task(control.ControlServer(listener, registry).run(), name="control"),
            ]
            if cloud is not None:
                helpers.append(group.create_task(cloud.sync.run(), name="cloud-sync"))
                helpers.append(group.create_task(cloud.collector.run(), name="collector"))
            if reporter is not None:
                helpers.append(group.create_task(reporter.run(), name="dex-reporter"))
            notify("READY=1")
            await stop.wait()
            notify("STOPPING=1")
            log.info("vmcd_stopping")
            if cloud is not None:
                cloud.sync.closing = True
            bus.stop()
            try:
                async with asyncio.timeout(STOP_STEPS_S):
                    await supervisor  # cancelled at the deadline: the bus process is killed
                    if cloud is not None:
                        await cloud.sync.stop()  # after the bus: its last events come first
            except TimeoutError:
                log.warning("vmcd_stop_cut_short", bus_stopped=supervisor.done())
            for task in helpers:
                task.cancel()
    finally:
        journal.close()
    log.info("vmcd_stopped", sessions=local.sessions_completed, vends=local.vends_succeeded)
    return 0


async def _ticker(
    service: ServiceMonitor,
    vending: RemoteVending,
    profile: ProfileService,
    prices: PriceFeed | None,
    storage: StorageGuard,
) -> None:
    """The free space on the state directory's filesystem (:mod:`vmc.storage`), the deadlines
    of transactions and of the machine's own sessions (with a cloud or not: a test vend has
    one), a settled change of the machine's profile, a changed price list for an
    Executive machine with price holding, and the service state's changes with time
    (``vmctl status``, and the cloud's ``state``); the garbage collector's young
    generations while nothing is open (:mod:`vmc.gc_pauses`)."""
    while True:
        await asyncio.sleep(TICK_S)
        storage.check()
        vending.tick()
        profile.tick()
        if prices is not None:
            prices.tick()
        service.tick()
        gc_pauses.collect_while_idle(vending.busy)


def prune_journal(journal: Journal, now: float, retention_days: int) -> dict[str, int]:
    """Forget command and vmctl operation ids after :data:`COMMAND_MEMORY_S` and history after
    the retention (see :meth:`Journal.prune`); how many rows went, per table."""
    journal.prune_commands(now - COMMAND_MEMORY_S)
    journal.prune_local(now - COMMAND_MEMORY_S)
    journal.prune_requests(now - DATA_REQUEST_KEEP_S)
    pruned = journal.prune(now - retention_days * DAY_S)
    if any(pruned.values()):
        log.info("journal_pruned", **pruned)
    return pruned


async def _pruner(journal: Journal, retention_days: int) -> None:
    """At start and hourly, with or without a cloud: the local policy's book grows too."""
    while True:
        try:
            prune_journal(journal, time.time(), retention_days)
        except StorageFullError:
            log.warning("journal_prune_skipped", reason="storage_full")
        await asyncio.sleep(PRUNE_EVERY_S)


async def _checkpointer(journal: Journal) -> None:
    """The journal's checkpoints, from a worker thread every :data:`CHECKPOINT_EVERY_S`: none
    runs inside a commit on a vend's path any more."""
    journal.take_over_checkpoints()
    while True:
        await asyncio.sleep(CHECKPOINT_EVERY_S)
        try:
            await asyncio.to_thread(journal.checkpoint)
        except sqlite3.Error as exc:  # a full disk, say: the WAL keeps the commits meanwhile
            log.warning("journal_checkpoint_failed", error=str(exc))


async def _watchdog(bus: BusSupervisor, on_link: Callable[[], None]) -> None:
    """WATCHDOG=1 while vmcd itself is healthy; STATUS= and one log line per bus status change.

    Healthy means this loop runs and the bus supervisor does its job (see
    :meth:`BusSupervisor.healthy`), not that the VMC polls: a silent bus is a status to show,
    and restarting vmcd would not switch the VMC on.
    """
    ping = watchdog_interval()
    every = STATUS_EVERY_S if ping is None else min(ping, STATUS_EVERY_S)
    shown: BusStatus | None = None
    while True:
        status = bus.status()
        if status != shown:
            notify(f"STATUS={status.text}")
            emit = log.info if bus.healthy() else log.warning
            emit("mdb_status", status=status.text, mdb_link="up" if status.link_up else "down")
            if shown is not None and status.link_up != shown.link_up:
                on_link()
            shown = status
        if ping is not None and bus.healthy():
            notify("WATCHDOG=1")
        await asyncio.sleep(every)


def main(argv: list[str] | None = None) -> int:
    quiet_early_stops()  # again for callers that come in here, not through vmc.launch
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        check_host(config)
    except ConfigError as exc:
        print(f"vmcd: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        lock = hold(config.daemon.state_dir, LOCK_WAIT_S)
    except StateDirBusyError as exc:
        print(f"vmcd: {exc}", file=sys.stderr)
        return 2
    with lock:
        path = control_socket_path(config.daemon, os.environ)
        try:
            listener = control.bind(path)
        except control.SocketError as exc:
            print(f"vmcd: {exc}", file=sys.stderr)
            return 2
        configure_logging(config.daemon.log_level)
        made = [(path, os.lstat(path).st_ino)]
        pointer = config.daemon.state_dir / SOCKET_NAME
        if pointer != path:
            made.extend(_point_at_socket(pointer, path))
        try:
            return asyncio.run(run_daemon(config, listener, path))
        except ConfigError as exc:  # found only once running: the journal's file
            print(f"vmcd: configuration error: {exc}", file=sys.stderr)
            return 2
        finally:
            listener.close()
            for made_path, inode in made:
                control.remove_if_ours(made_path, inode)


def _point_at_socket(pointer: Path, path: Path) -> list[tuple[Path, int]]:
    """``<state_dir>/vmcd.sock`` -> the socket elsewhere (``RUNTIME_DIRECTORY``, a flag), so
    ``vmctl`` finds it from the state directory alone; what was made, to remove at exit."""
    try:
        if control.point_at(pointer, path.absolute()):
            return [(pointer, os.lstat(pointer).st_ino)]
        log.warning("control_socket_pointer_skipped", path=str(pointer), reason="not a symlink")
    except OSError as exc:
        log.warning("control_socket_pointer_failed", path=str(pointer), error=exc.strerror)
    return []


if __name__ == "__main__":
    sys.exit(main())
