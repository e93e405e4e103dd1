"""vmcd: the machine-side daemon.

One asyncio TaskGroup: the MDB bus supervisor (its process answers the VMC) and the systemd
watchdog. Expected faults are retried inside each service; anything unexpected ends the
group and the process exits non-zero, for systemd to restart it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog

from protocols.errors import ConfigError
from vmc.config import APPROVAL_POLICIES, Config, load_config
from vmc.journal import Journal
from vmc.logs import configure_logging
from vmc.services.bus import BusSupervisor
from vmc.services.bus_messages import BusCommand
from vmc.services.vending import LocalVending
from vmc.systemd import notify

log = structlog.get_logger("vmc.daemon")

WATCHDOG_POLL_AGE_S = 10.0


def _address(text: str) -> int:
    return int(text, 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmcd", description="vmc machine-side daemon")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--mdb", help="MDB port URL: uart:///dev/ttyAMA0, pty:///dev/pts/N, loop://N")
    p.add_argument("--mdb-address", type=_address, help="cashless address: 0x10 or 0x60")
    p.add_argument("--level", type=int, help="reader feature level: 1, 2 or 3")
    p.add_argument("--state-dir", help="directory for the journal")
    p.add_argument("--local-approval", choices=APPROVAL_POLICIES, help="decide vends locally")
    p.add_argument("--log-level", help="debug, info, warning or error")
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {
        "mdb.port": args.mdb,
        "mdb.address": args.mdb_address,
        "mdb.level": args.level,
        "mdb.local_approval": args.local_approval,
        "daemon.state_dir": args.state_dir,
        "daemon.log_level": args.log_level,
    }
    config = load_config(args.config, overrides)
    if config.mdb.port is None:
        raise ConfigError("mdb.port: no MDB port; give --mdb URL or set port in [mdb]")
    return config


async def run_daemon(config: Config) -> int:
    assert config.mdb.port is not None
    journal = Journal(config.daemon.state_dir / "journal.sqlite3")
    bus: BusSupervisor
    accept = config.mdb.local_approval == "accept"

    def send(command: BusCommand) -> bool:
        return bus.send(command)  # bound late: the supervisor needs vending.handle first

    vending = LocalVending(accept, journal, send)
    bus = BusSupervisor(
        config.mdb.port,
        config.reader,
        vending.handle,
        realtime_priority=config.mdb.realtime_priority,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "vmcd_started",
        port=config.mdb.port,
        address=hex(config.mdb.address),
        level=config.mdb.level,
        local_approval=config.mdb.local_approval,
        state_dir=str(config.daemon.state_dir),
    )
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(bus.run(), name="bus-supervisor")
            watchdog = group.create_task(_watchdog(bus), name="watchdog")
            notify("READY=1")
            await stop.wait()
            notify("STOPPING=1")
            log.info("vmcd_stopping")
            await bus.stop()
            watchdog.cancel()
    finally:
        journal.close()
    log.info("vmcd_stopped", sessions=vending.sessions_completed, vends=vending.vends_succeeded)
    return 0


async def _watchdog(bus: BusSupervisor) -> None:
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    interval = usec / 2e6 if usec else 5.0
    while True:
        await asyncio.sleep(interval)
        beat = bus.last_heartbeat
        polling = (
            beat is not None
            and beat.last_poll_age is not None
            and beat.last_poll_age < WATCHDOG_POLL_AGE_S
        )
        if usec and polling:
            notify("WATCHDOG=1")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"vmcd: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.daemon.log_level)
    return asyncio.run(run_daemon(config))


if __name__ == "__main__":
    sys.exit(main())
