"""A whole machine for cloud tests: Mosquitto, vmcd on a pty, the sim VMC and the backend."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.pty import PtyPair
from protocols.dex.ucs import MAX_BLOCK
from sim.backend import Entry, Policy, SimBackend
from sim.broker import MosquittoBroker
from sim.brokers import RunningBroker
from sim.daemon_proc import DaemonProcess
from sim.dex_source import DexSource, SourceFaults
from sim.scenarios import Customers, SessionResult
from sim.vmc_counters import audit_from_counters
from sim.vmc_master import VmcMaster
from vmc.cloud import signing

DEVICE = "m1"


@dataclass
class Rig:
    broker: RunningBroker
    daemon: DaemonProcess
    vmc: VmcMaster
    backend: SimBackend
    customers: Customers
    pair: PtyPair

    async def restart_daemon(self) -> None:
        await self.daemon.start()
        await self.vmc.initialise(level=self.level)

    async def paid_remote_vend(self, ref: str = "alice") -> tuple[SessionResult, Entry]:
        """The seven steps once: the backend locks for ``ref``, a customer buys selection 1,
        the backend pays; checked to the backend's books (charged the price, two events)."""
        txn_id = await self.backend.lock(DEVICE, ref)
        outcome = await self.customers.run("purchase", 1)
        assert outcome.ok, outcome
        entry = await self.backend.wait_done(txn_id)
        assert entry.result == "success"
        assert entry.charged == entry.price > 0
        assert [e["type"] for e in self.backend.event_log] == ["txn.request", "txn.vend"]
        return outcome, entry

    def outbox_size(self) -> int:
        """Messages the daemon still has to get the broker's PUBACK for (from its journal)."""
        path = self.daemon.state_dir / "journal.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def stock_levels(self) -> dict[str, int]:
        """The daemon's committed stock levels by stored key (``s:1``, ``i:beans``)."""
        path = self.daemon.state_dir / "journal.sqlite3"
        with contextlib.closing(sqlite3.connect(path)) as db:
            rows = db.execute("SELECT key, level FROM stock_levels").fetchall()
        return {str(k): int(v) for k, v in rows}

    level: int = 3


@contextlib.asynccontextmanager
async def machine(
    tmp_path: Path,
    broker: RunningBroker,
    *,
    level: int = 3,
    policy: Policy = Policy.POST_BILLING,
    balances: dict[str, int] | None = None,
    extra: tuple[str, ...] = (),
    initialise: bool = True,
    signing_key: Ed25519PrivateKey | None = None,
    device_key: bool = False,
    state_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    mqtt_url: str | None = None,
    wrap: tuple[str, ...] = (),
    backend_protocol: aiomqtt.ProtocolVersion | None = None,
) -> AsyncIterator[Rig]:
    """The whole machine, its VMC having initialised and enabled the reader (unless not
    ``initialise``: then the VMC has not said a word yet). On an mTLS broker vmcd and the
    backend connect with certificates (CN = the device id, ``backend``). With ``signing_key``
    the backend signs its commands and vmcd trusts that key alone; with ``device_key`` vmcd
    signs what it publishes with a key of its own, which the backend checks. ``state_dir``:
    the journal's directory (default ``tmp_path/state``, with the log); if given, the log is
    written to ``tmp_path`` (a journal on a small filesystem must not share it with the log).
    ``env``: more environment for vmcd. The daemon reaches the broker at ``mqtt_url`` when
    given (a proxy in front of it), the backend always directly; ``wrap`` is a command the
    daemon runs under (``ip netns exec NS``). ``broker`` may be any of :mod:`sim.brokers`;
    ``backend_protocol`` is the backend's MQTT version there."""
    signed: list[str] = []
    device_keys = {}
    if signing_key is not None:
        signed.append(f'command_keys = ["{signing.public_text(signing_key.public_key())}"]')
    if device_key:
        key_file = tmp_path / "device.key"
        device_keys[DEVICE] = signing.DeviceKey.create(str(key_file)).public
        signed.append(f'device_key_file = "{key_file}"')
    pair = PtyPair()
    config = tmp_path / "cloud.toml"
    if isinstance(broker, MosquittoBroker) and broker.mtls:
        config.write_text(broker.device_config(DEVICE) + "".join(f"{s}\n" for s in signed))
        cloud: tuple[str, ...] = ("--config", str(config))
        backend_url, tls = broker.tls_url, broker.client_context("backend")
    else:
        cloud = ("--mqtt", mqtt_url or broker.url, "--device-id", DEVICE)
        backend_url, tls = broker.url, None
        if signed:
            config.write_text("[cloud]\n" + "".join(f"{s}\n" for s in signed))
            cloud = (*cloud, "--config", str(config))
    daemon = DaemonProcess(
        pair,
        state_dir or tmp_path / "state",
        level=level,
        local_approval="deny",
        extra=(*cloud, *extra),
        log_path=None if state_dir is None else tmp_path / "vmcd.log",
        env=env,
    )
    daemon.args[:0] = wrap
    backend = SimBackend(
        backend_url,
        policy=policy,
        balances=balances or {"alice": 10_000},
        tls_context=tls,
        signing_key=signing_key,
        device_keys=device_keys,
        protocol=backend_protocol,
    )
    backend_task = asyncio.create_task(backend.run())
    await backend.ready()
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        if initialise:
            await vmc.initialise(level=level)
        await backend.wait_for(lambda: backend.status.get(DEVICE) == "online", 10)
        if initialise:
            await backend.wait_for(
                lambda: (backend.state.get(DEVICE) or {}).get("reader") == "enabled", 10
            )
        customers = Customers(vmc, random.Random(5), poll_period=0.01)
        yield Rig(broker, daemon, vmc, backend, customers, pair, level)
    finally:
        await take_down(vmc.close, daemon.stop, backend, backend_task, pair)


async def take_down(
    close_vmc: Callable[[], None],
    stop_daemon: Callable[[], Awaitable[object]],
    backend: SimBackend,
    backend_task: asyncio.Task[None],
    pair: PtyPair,
) -> None:
    """A machine rig's parts stopped in order: the VMC, vmcd, the backend, the pty pair."""
    close_vmc()
    await stop_daemon()
    await backend.close()
    backend_task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await backend_task
    pair.close()


@dataclass
class DexLine:
    """The simulated VMC's DEX port: the source serving it, the pty pair, the serving task."""

    source: DexSource
    pair: PtyPair
    serving: asyncio.Task[None]
    closed: bool = False

    async def hang_up(self) -> None:
        """The cable is pulled: the reader's end of the line hangs up."""
        if not self.closed:
            self.closed = True
            self.serving.cancel()
            await asyncio.gather(self.serving, return_exceptions=True)
            self.pair.close()


@contextlib.asynccontextmanager
async def machine_with_dex(
    tmp_path: Path,
    broker: MosquittoBroker,
    more_config: str = "",
    *,
    read_at_start: bool = True,
    block_size: int = MAX_BLOCK,
    baud: int | None = None,
    faults: SourceFaults | None = None,
    serve_from: asyncio.Event | None = None,
) -> AsyncIterator[tuple[Rig, DexLine]]:
    """vmcd with the cloud and a DEX port (read at start unless not ``read_at_start``), served
    from the VMC's counters by a simulated VMC (in blocks of ``block_size``, paced at ``baud``,
    spoilt by ``faults``; silent until ``serve_from`` is set, if given); ``more_config`` is
    TOML for the other tables."""
    dex_pair = PtyPair()
    config = tmp_path / "vmc.toml"
    start = "true" if read_at_start else "false"
    config.write_text(
        f'[dex]\nport = "{dex_pair.device_url}"\nread_at_start = {start}\nschedule = []\n'
        + more_config
    )
    async with machine(tmp_path, broker, extra=("--config", str(config))) as rig:
        source = DexSource(
            dex_pair.master.fileno(),
            lambda: audit_from_counters(rig.vmc.sales),
            block_size=block_size,
            baud=baud,
            faults=faults,
        )

        async def serve() -> None:
            if serve_from is not None:
                await serve_from.wait()
                while dex_pair.master.read_available():
                    pass  # what reads that nobody answered left on the line
            await source.serve()

        line = DexLine(source, dex_pair, asyncio.create_task(serve()))
        try:
            yield rig, line
        finally:
            await line.hang_up()
