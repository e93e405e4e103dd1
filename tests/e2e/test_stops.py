"""SIGTERM or SIGINT ends the real vmcd quickly in every state, with exit 0 and no orphan.

Each test puts vmcd (the console script, on a pty) into one state, signals it, and measures
the time to exit against the daemon's stop budget plus a margin for a busy machine. The bus
process must be gone by then: no process may still run ``vmc.services.bus_process`` on the
test's port.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import pytest

from drivers.pty import PtyPair
from sim.broker import MosquittoBroker, free_port
from sim.dex_source import DexSource
from sim.vmc_master import VmcMaster
from tests.e2e.vmcd_proc import STOP_MARGIN_S, VMCD, Vmcd, alive
from tests.samples import AUDIT
from tests.waiting import wait_for
from vmc.daemon import STOP_BUDGET_S


def bus_processes(port_url: str) -> list[int]:
    """Every live process serving ``port_url`` as vmc's bus process, whoever its parent is."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        serving = b"vmc.services.bus_process" in argv and port_url.encode() in argv
        if serving and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, port_url: str, *args: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[Vmcd]:
    vmcd = Vmcd(tmp_path / "state", "--mdb", port_url, *args, env=env)
    await vmcd.start()
    try:
        yield vmcd
    finally:
        await vmcd.close()


async def assert_quick_clean_stop(
    vmcd: Vmcd, port_url: str, sig: int = signal.SIGTERM, *, group: bool = False
) -> float:
    bus = vmcd.bus_pid()
    seconds = await vmcd.signal_and_wait(sig, group=group)
    tail = "\n".join(vmcd.lines()[-15:])
    assert vmcd.proc is not None
    assert vmcd.proc.returncode == 0, tail
    assert not [line for line in vmcd.lines() if "Traceback" in line], tail
    assert seconds <= STOP_BUDGET_S + STOP_MARGIN_S, f"stop took {seconds:.2f} s\n{tail}"
    assert bus is None or not alive(bus), "the bus process outlived vmcd"
    assert not bus_processes(port_url), "an orphan bus process still serves the port"
    print(f"stop: {seconds:.2f} s")
    return seconds


@contextlib.asynccontextmanager
async def background(work: Awaitable[object]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(work)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["sigterm", "sigint", "ctrl-c"],
)
async def test_stop_while_idle_without_a_vmc(tmp_path: Path, sig: int, group: bool) -> None:
    pair = PtyPair()
    try:
        async with running(tmp_path, pair.device_url) as vmcd:
            await vmcd.wait_event("bus_ready")
            await assert_quick_clean_stop(vmcd, pair.device_url, sig, group=group)
    finally:
        pair.close()


async def test_stop_during_start_up(tmp_path: Path) -> None:
    """The signal lands while the first bus process is being started, before it is ready."""
    pair = PtyPair()
    try:
        async with running(tmp_path, pair.device_url) as vmcd:
            await wait_for(vmcd.bus_pid, 20, "the bus process to be spawned")
            assert not vmcd.events("bus_ready")
            await assert_quick_clean_stop(vmcd, pair.device_url)
    finally:
        pair.close()


async def test_stop_while_waiting_to_restart_the_bus_process(tmp_path: Path) -> None:
    """/dev/null exists but is no terminal: the bus process fails at once, again and again,
    and the supervisor's backoff grows past the stop budget."""
    url = "pty:///dev/null"
    async with running(tmp_path, url) as vmcd:

        def long_backoff() -> bool:
            waits = [e.get("restart_in_s", 0) for e in vmcd.events("bus_process_exited")]
            return any(w >= 2 * STOP_BUDGET_S for w in waits)

        await wait_for(long_backoff, 60, "a restart backoff longer than the stop budget")
        await assert_quick_clean_stop(vmcd, url)


async def test_stop_while_waiting_for_a_missing_device(tmp_path: Path) -> None:
    url = f"pty:///dev/vmc-test-missing-{uuid.uuid4().hex[:8]}"
    async with running(tmp_path, url) as vmcd:
        await vmcd.wait_event("mdb_port_waiting", 3)
        await assert_quick_clean_stop(vmcd, url)


async def _poll_forever(vmc: VmcMaster) -> None:
    """A VMC keeps polling, whatever the reader does."""
    while True:
        await vmc.poll()
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("answered", [True, False], ids=["dispensing", "vend_requested"])
async def test_stop_mid_session_with_the_vmc(tmp_path: Path, answered: bool) -> None:
    """A vend approved and dispensing, or just requested: the bus process settles what the VMC
    must hear (while the VMC keeps polling) and exits."""
    pair = PtyPair()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        async with running(tmp_path, pair.device_url, "--local-approval", "accept") as vmcd:
            await vmc.initialise()
            assert (await vmc.vend_request(vmc.money(150), 7)).is_ack
            async with background(_poll_forever(vmc)):
                if answered:
                    await vmcd.wait_event("vend_approved", timeout=10)
                await assert_quick_clean_stop(vmcd, pair.device_url)
    finally:
        vmc.close()
        pair.close()


@contextlib.asynccontextmanager
async def blackhole() -> AsyncIterator[tuple[str, Callable[[], int]]]:
    """A TCP listener that accepts MQTT clients and never answers them."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"mqtt://127.0.0.1:{port}", lambda: len(accepted)
    finally:
        for writer in accepted:
            writer.close()
        server.close()


async def test_stop_while_the_broker_refuses(tmp_path: Path) -> None:
    pair = PtyPair()
    mqtt = f"mqtt://127.0.0.1:{free_port()}"
    try:
        async with running(tmp_path, pair.device_url, "--mqtt", mqtt, "--device-id", "m1") as vmcd:
            reconnects = await vmcd.wait_event("mqtt_reconnect", 3)
            assert all(e.get("in_s") for e in reconnects)
            await assert_quick_clean_stop(vmcd, pair.device_url)
    finally:
        pair.close()


async def test_stop_while_the_broker_never_answers(tmp_path: Path) -> None:
    pair = PtyPair()
    try:
        async with (
            blackhole() as (mqtt, connections),
            running(tmp_path, pair.device_url, "--mqtt", mqtt, "--device-id", "m1") as vmcd,
        ):
            await wait_for(connections, 20, "vmcd to connect to the silent broker")
            await vmcd.wait_event("bus_ready")
            await assert_quick_clean_stop(vmcd, pair.device_url)
    finally:
        pair.close()


async def test_stop_during_a_dex_read(tmp_path: Path) -> None:
    pair, dex_pair = PtyPair(), PtyPair()
    config = tmp_path / "vmc.toml"
    config.write_text(
        f'[dex]\nport = "{dex_pair.device_url}"\nread_at_start = true\nschedule = []\n'
    )
    # At 1200 baud the audit takes longer than the test will wait: the read is cut short.
    source = DexSource(dex_pair.master.fileno(), AUDIT, baud=1200)
    try:
        async with (
            running(tmp_path, pair.device_url, "--config", str(config)) as vmcd,
            background(source.serve()),
        ):
            await vmcd.wait_event("dex_read")
            await wait_for(lambda: source.line.sent > 200, 20, "the audit to be on its way")
            await assert_quick_clean_stop(vmcd, pair.device_url)
            assert not vmcd.events("dex_report")
    finally:
        dex_pair.close()
        pair.close()


def test_the_stop_budget_fits_systemds_stop_timeout() -> None:
    unit = (Path(__file__).parents[2] / "systemd" / "vmcd.service").read_text()
    (line,) = [x for x in unit.splitlines() if x.startswith("TimeoutStopSec=")]
    assert int(line.split("=")[1]) > STOP_BUDGET_S


async def test_stop_while_the_connected_broker_hangs(tmp_path: Path) -> None:
    """The broker froze after the connect: saying "offline" cannot complete, and need not."""
    pair = PtyPair()
    try:
        with MosquittoBroker() as broker:
            async with running(
                tmp_path, pair.device_url, "--mqtt", broker.url, "--device-id", "m1"
            ) as vmcd:
                await vmcd.wait_event("mqtt_connected")
                await vmcd.wait_event("bus_ready")
                assert broker._proc is not None
                broker._proc.send_signal(signal.SIGSTOP)
                try:
                    await assert_quick_clean_stop(vmcd, pair.device_url)
                finally:
                    broker._proc.send_signal(signal.SIGCONT)
    finally:
        pair.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_a_stop_before_the_event_loop_runs_is_quiet(tmp_path: Path, sig: int) -> None:
    """The signal lands while vmcd still checks its configuration (before the loop's handlers)."""
    script = (
        "import os, sys, vmc.daemon as d\n"
        "real = d.check_host\n"
        "def check(config):\n"
        f"    os.kill(os.getpid(), {int(sig)})\n"
        "    real(config)\n"
        "d.check_host = check\n"
        "sys.exit(d.main(sys.argv[1:]))\n"
    )
    argv = ["--mdb", "pty:///dev/null", "--state-dir", str(tmp_path / "state")]
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state" / "journal.sqlite3").exists()


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` now (SigCgt in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_ctrl_c_while_vmcd_still_imports_is_quiet(tmp_path: Path) -> None:
    """Ctrl-C as soon as the console script has its first handler, while the daemon's modules
    are still being imported (Python itself never catches SIGTERM, so its handler is ours)."""
    proc = subprocess.Popen(
        [str(VMCD), "--mdb", "pty:///dev/null", "--state-dir", str(tmp_path / "state")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        while not _catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=STOP_BUDGET_S + STOP_MARGIN_S)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
