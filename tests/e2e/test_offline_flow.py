"""Bounded offline approvals end to end: Mosquitto, vmcd on a pty behind a link that is cut,
the simulated VMC, ``vmctl present`` as a badge reader runs it, and the backend's books."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sim.backend import SimBackend
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.e2e.console import vmctl
from tests.e2e.mqtt_proxy import LinkProxy
from tests.waiting import wait_until

MENU = {3: 150, 4: 120}
BOUNDS = "[offline]\nenabled = true\nmax_total_value = 1000\nmax_vends = 3\nmax_list_age_h = 1\n"
LIMITS = {"alice": (2, 280), "bob": (5, 5000)}


@contextlib.asynccontextmanager
async def offline_machine(
    tmp_path: Path, broker: MosquittoBroker
) -> AsyncIterator[tuple[Rig, LinkProxy]]:
    """The machine, its cloud link through a proxy that can be cut, the allow-list pushed."""
    proxy = LinkProxy(broker.port)
    await proxy.start()
    config = tmp_path / "vmc.toml"
    config.write_text(BOUNDS)
    extra = ("--mqtt", proxy.url, "--config", str(config))
    try:
        async with machine(tmp_path, broker, extra=extra) as rig:
            rig.customers.menu = MENU
            reply = await rig.backend.offline_allow(DEVICE, 1, LIMITS)
            assert reply["ok"], reply
            assert (reply["result"]["refs"], reply["result"]["enabled"]) == (2, True)
            yield rig, proxy
    finally:
        await proxy.close()


async def present(rig: Rig, ref: str) -> tuple[int, dict[str, Any]]:
    """``vmctl present REF --json``, again while the reader is not enabled yet (a restart)."""
    state = str(rig.daemon.state_dir)
    answer: dict[str, Any] = {}
    code = -1

    async def asked() -> bool:
        nonlocal code, answer
        code, out, err = await vmctl("present", ref, "--json", "--state-dir", state)
        assert out, err
        answer = json.loads(out)
        return bool(answer["code"] != "reader_unavailable")

    for _ in range(50):
        if await asked():
            break
    return code, answer


async def cloud_state(rig: Rig) -> str:
    code, out, err = await vmctl("status", "--json", "--state-dir", str(rig.daemon.state_dir))
    assert code == 0, err
    return str(json.loads(out)["cloud"]["state"])


async def cut(rig: Rig, proxy: LinkProxy) -> None:
    proxy.cut()
    for _ in range(100):
        if await cloud_state(rig) == "offline":
            return
    raise AssertionError("vmcd did not see its link go down")


def vended_in_journal(rig: Rig) -> int:
    path = rig.daemon.state_dir / "journal.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM txns WHERE state = 'vended'").fetchone()[0])


def offline_vends(backend: SimBackend) -> list[dict[str, Any]]:
    return [e for e in backend.event_log if e["type"] == "txn.vend" and e.get("offline")]


async def test_offline_approvals_within_bounds_then_reported_once_when_the_link_returns(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with offline_machine(tmp_path, broker) as (rig, proxy):
        backend = rig.backend
        # Online, a presented badge is a lock: the backend decides from the txn.request.
        code, answer = await present(rig, "alice")
        assert (code, answer["ok"], answer["mode"]) == (0, True, "online")
        assert await rig.customers.purchase(3) == "vended"
        entry = await backend.wait_done(answer["txn_id"])
        assert (entry.member, entry.result) == ("alice", "success")

        await cut(rig, proxy)
        code, answer = await present(rig, "alice")
        assert (code, answer["mode"], answer["value"], answer["list_version"]) == (
            0,
            "offline",
            280,
            1,
        )
        assert await rig.customers.purchase(3) == "vended"
        code, answer = await present(rig, "alice")
        assert answer["value"] == 130  # what alice's 280 leaves
        assert await rig.customers.session([3, 4]) == ["denied", "vended"]  # 150 is over 130
        code, answer = await present(rig, "alice")
        assert (code, answer["ok"], answer["code"]) == (1, False, "ref_vends")
        code, answer = await present(rig, "carol")
        assert (code, answer["code"]) == (1, "unknown_ref")
        code, answer = await present(rig, "bob")
        assert answer["value"] == 1000 - 270  # the machine's total caps bob's 5000
        assert await rig.customers.purchase(4) == "vended"
        code, answer = await present(rig, "bob")
        assert (code, answer["code"]) == (1, "total_vends")
        assert not offline_vends(backend)  # the backend heard nothing yet

        proxy.restore()
        await backend.wait_for(lambda: len(backend.books.offline) == 3, 30)
        assert await wait_until(lambda: rig.outbox_size() == 0)
        vends = offline_vends(backend)
        assert sorted((v["ref"], v["amount"]) for v in vends) == [
            ("alice", 120),
            ("alice", 150),
            ("bob", 120),
        ]
        assert all(v["list_version"] == 1 and v["result"] == "success" for v in vends)
        assert len({v["txn_id"] for v in vends}) == 3
        assert backend.books.balances["alice"] == 10_000 - 150 - 150 - 120
        await backend.wait_for(
            lambda: (backend.state.get(DEVICE) or {}).get("offline", {}).get("vends") == 3, 10
        )
        shown = backend.state[DEVICE]["offline"]
        assert (shown["value"], shown["list_version"], shown["enabled"]) == (390, 1, True)


async def test_offline_vends_survive_kill_9_and_are_reported_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with offline_machine(tmp_path, broker) as (rig, proxy):
        backend = rig.backend
        await cut(rig, proxy)
        # Approved, then the daemon dies before the VMC's result: the vend is unknown.
        _, answer = await present(rig, "alice")
        assert answer["value"] == 280
        await rig.customers.session_shown()
        assert await rig.customers.select(item=3, vend=False) == "approved"
        rig.daemon.kill()
        await rig.daemon.proc.wait()  # type: ignore[union-attr]
        await rig.restart_daemon()
        # A vend that succeeded, its report still in the outbox, and the daemon dies again.
        _, answer = await present(rig, "alice")
        assert answer["value"] == 130  # the restart kept the list and its usage
        assert await rig.customers.purchase(4) == "vended"
        assert await wait_until(lambda: vended_in_journal(rig) == 1)  # committed, not sent
        rig.daemon.kill()
        await rig.daemon.proc.wait()  # type: ignore[union-attr]
        await rig.restart_daemon()
        _, answer = await present(rig, "alice")
        assert answer["code"] == "ref_vends"
        proxy.restore()
        await backend.wait_for(lambda: len(backend.books.offline) == 2, 30)
        assert await wait_until(lambda: rig.outbox_size() == 0)
        vends = offline_vends(backend)
        assert sorted((v["result"], v["amount"], v["detail"]) for v in vends) == [
            ("success", 120, ""),
            ("unknown", 150, "restart_during_vend"),
        ]
        assert backend.books.balances["alice"] == 10_000 - 150 - 120
