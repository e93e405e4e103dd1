"""An MDB port device that is not there (yet), or goes away: vmcd waits for it and serves it.

The device is a pty whose path is a symlink under /dev: it "appears" when the link is made
and "is unplugged" when the link is removed and the pty closed, as a USB adapter would.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from drivers.pty import PtyPair
from sim.vmc_master import VmcMaster
from tests.e2e.test_stops import assert_quick_clean_stop, running
from tests.e2e.test_watchdog import WATCHDOG_USEC, notify_socket
from tests.e2e.vmcd_proc import Vmcd
from vmc.services.bus import MISSING_PORT_HINT, PORT_WAIT_MAX_S

WAIT_EVENTS = ("mdb_port_missing", "mdb_port_waiting", "mdb_port_appeared")


def _missing_path() -> Path:
    return Path(f"/dev/vmc-test-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def plugged(path: Path) -> Iterator[PtyPair]:
    """A pty reachable at ``path`` for as long as the block runs."""
    pair = PtyPair()
    path.symlink_to(pair.device_path)
    try:
        yield pair
    finally:
        path.unlink(missing_ok=True)
        pair.close()


def _attempts(vmcd: Vmcd) -> list[dict[str, Any]]:
    return [e for e in vmcd.events() if e.get("event") in WAIT_EVENTS]


def _assert_one_line_per_attempt(vmcd: Vmcd) -> None:
    """Each look for the device is one line, numbered from 1 at each wait; nothing else."""
    attempts = [e["attempt"] for e in _attempts(vmcd)]
    restarts = [i for i, n in enumerate(attempts) if n == 1]
    for start, end in zip(restarts, [*restarts[1:], len(attempts)], strict=True):
        assert attempts[start:end] == list(range(1, end - start + 1)), attempts
    assert not vmcd.events("mdb_port_failed")
    assert not [line for line in vmcd.lines() if line.startswith("vmc-bus")]


async def test_a_missing_uart_is_waited_for_with_one_line_per_attempt(tmp_path: Path) -> None:
    path = _missing_path()
    url = f"uart://{path}"
    with notify_socket(tmp_path) as notify:
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        async with running(tmp_path, url, env=env) as vmcd:
            await vmcd.wait_event("mdb_port_waiting", 3)
            (first,) = vmcd.events("mdb_port_missing")
            assert first["port"] == url
            assert first["hint"] == MISSING_PORT_HINT
            assert first["level"] == "warning"
            _assert_one_line_per_attempt(vmcd)
            assert all(e["retry_in_s"] <= PORT_WAIT_MAX_S for e in _attempts(vmcd))
            assert vmcd.bus_pid() is None  # no process is started for a device that is not there
            assert not vmcd.events("bus_process_exited")
            # Waiting on purpose is healthy: systemd keeps hearing from vmcd, and why it waits.
            assert notify.status() == f"waiting for {path}"
            assert notify.pings_since(0) >= 3
            await assert_quick_clean_stop(vmcd, url)


async def _serve_a_vmc(pair: PtyPair) -> None:
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise(wait_s=4 * PORT_WAIT_MAX_S)
        assert (await vmc.poll()).is_ack
    finally:
        vmc.close()


async def test_the_device_is_served_once_it_appears_and_after_a_replug(tmp_path: Path) -> None:
    path = _missing_path()
    url = f"pty://{path}"
    async with running(tmp_path, url) as vmcd:
        await vmcd.wait_event("mdb_port_waiting", 2)
        with plugged(path) as pair:
            await _serve_a_vmc(pair)
            (appeared,) = vmcd.events("mdb_port_appeared")
            assert appeared["attempt"] >= 3
            await vmcd.wait_event("bus_ready")
        # Unplugged while serving: the bus process exits once, then the device is waited for.
        exited = await vmcd.wait_event("bus_process_exited")
        assert exited[0]["error"]
        assert exited[0]["restart_in_s"] is None
        await vmcd.wait_event("mdb_port_missing", 2)
        await vmcd.wait_event("mdb_port_waiting", 3)
        assert len(vmcd.events("bus_process_exited")) == 1
        with plugged(path) as pair:
            await _serve_a_vmc(pair)
            await vmcd.wait_event("bus_ready", 2)
            _assert_one_line_per_attempt(vmcd)
            await assert_quick_clean_stop(vmcd, url)
