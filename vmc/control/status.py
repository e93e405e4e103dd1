"""``vmctl status``: the bus's state in one word, and the short codes of the common faults.

Rules only (sans-I/O): the status is built by :mod:`vmc.control.commands` from the running
services, and each code is decided here from that status's own fields, so docs/cli.md can say
exactly when each one shows and what to check.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from protocols.mdb.events import State
from vmc.services.bus import BusState
from vmc.services.bus_watch import IN_SESSION

READER_DISABLED_AFTER_S = 10.0
"""The VMC keeps the reader disabled this long with the link up: ``reader_disabled_by_vmc``."""
OUTBOX_STUCK_AFTER_S = 60.0
"""Connected, and the oldest message still unacknowledged this long after it was queued."""


class BusView(StrEnum):
    """``bus.state``: where the bus is, in the order a technician fixes things."""

    STARTING = "starting"
    WAITING_FOR_PORT = "waiting_for_port"
    RESTARTING = "restarting"
    NOT_RESPONDING = "not_responding"
    STOPPED = "stopped"
    NO_LINK = "no_link"
    POLLING = "polling"
    ENABLED = "enabled"
    IN_SESSION = "in_session"


class Code(StrEnum):
    STORAGE_FULL = "storage_full"
    MDB_PORT_MISSING = "mdb_port_missing"
    BUS_PROCESS_DOWN = "bus_process_down"
    NO_MDB_LINK = "no_mdb_link"
    READER_DISABLED_BY_VMC = "reader_disabled_by_vmc"
    CLOUD_OFFLINE = "cloud_offline"
    OUTBOX_STUCK = "outbox_stuck"
    DEX_SILENT = "dex_silent"
    DEX_READ_FAILED = "dex_read_failed"
    NEED_LOADING = "need_loading"


def bus_state(supervisor: BusState, healthy: bool, link_up: bool, reader: State | None) -> BusView:
    """The supervisor's state, then the link, then the reader's state the VMC put it in."""
    if supervisor is BusState.WAITING_FOR_PORT:
        return BusView.WAITING_FOR_PORT
    if supervisor is BusState.RESTARTING:
        return BusView.RESTARTING
    if supervisor is BusState.STOPPED:
        return BusView.STOPPED
    if not healthy:
        return BusView.NOT_RESPONDING
    if not link_up:
        return BusView.STARTING if supervisor is BusState.STARTING else BusView.NO_LINK
    if reader is State.ENABLED:
        return BusView.ENABLED
    if reader in IN_SESSION:
        return BusView.IN_SESSION
    return BusView.POLLING


def status_codes(status: Mapping[str, Any]) -> list[str]:
    """The codes that apply to a status (the keys :mod:`vmc.control.commands` builds)."""
    codes: list[Code] = []
    if (status.get("storage") or {}).get("state") == "full":
        codes.append(Code.STORAGE_FULL)
    bus = status["bus"]
    state = BusView(bus["state"])
    if state is BusView.WAITING_FOR_PORT:
        codes.append(Code.MDB_PORT_MISSING)
    elif state in (BusView.RESTARTING, BusView.NOT_RESPONDING):
        codes.append(Code.BUS_PROCESS_DOWN)
    elif state is BusView.NO_LINK:
        codes.append(Code.NO_MDB_LINK)
    elif state is BusView.POLLING and (bus["reader_for_s"] or 0.0) >= READER_DISABLED_AFTER_S:
        codes.append(Code.READER_DISABLED_BY_VMC)
    cloud = status["cloud"]
    if cloud["state"] == "offline":
        codes.append(Code.CLOUD_OFFLINE)
    elif cloud["state"] == "connected" and (cloud["oldest_unsent_age_s"] or 0.0) >= (
        OUTBOX_STUCK_AFTER_S
    ):
        codes.append(Code.OUTBOX_STUCK)
    last = status["reporter"].get("last_read")
    if last is not None and not last["ok"]:
        silent = last["size"] == 0 and last["step"] != "open"  # the port opened, then nothing
        codes.append(Code.DEX_SILENT if silent else Code.DEX_READ_FAILED)
    elif last is not None and not last["valid"]:
        codes.append(Code.DEX_READ_FAILED)
    if status["stock"]["need_loading"]:
        codes.append(Code.NEED_LOADING)
    return [code.value for code in codes]


CHECKS: dict[Code, str] = {
    Code.STORAGE_FULL: "the state directory's filesystem is full, so no money is taken (locks,"
    " approvals, vouchers, credits refused as storage_full): free space there (df -h on"
    " storage.path); vmcd takes money again by itself within a second of there being room",
    Code.MDB_PORT_MISSING: "the MDB port's device does not exist: plug the adapter in, or fix"
    " mdb.port (vmcd serves as soon as it appears)",
    Code.BUS_PROCESS_DOWN: "the bus process exited or does not report: vmcd's log says why"
    " (bus_process_exited); it is restarted with backoff",
    Code.NO_MDB_LINK: "no POLL from the VMC for 5 s: is the VMC on, the cable and the interface"
    " board wired, mdb.port the right port, mdb.address the one the VMC polls?",
    Code.READER_DISABLED_BY_VMC: "the VMC polls but keeps the reader disabled: the VMC's"
    " cashless or payment settings, its error list, a service mode or an open door",
    Code.CLOUD_OFFLINE: "no connection to the broker: the network, cloud.url, the credentials"
    " or TLS files (cloud.last_error says which)",
    Code.OUTBOX_STUCK: "connected, but the broker does not acknowledge the oldest message: the"
    " broker's ACL for vmc/ID/# and its limits",
    Code.DEX_SILENT: "the last DEX read got no answer: the DEX cable, dex.port, dex.protocol"
    " and the VMC's DEX/audit settings; vmctl dex read tries again now",
    Code.DEX_READ_FAILED: "the last DEX read failed or its audit was not valid (the step and"
    " reason are shown): try vmctl dex read; a bad line shows as a failed transfer",
    Code.NEED_LOADING: "a selection or ingredient is at or under its alarm level: vmctl stock"
    " show, then refill",
}
"""What to check for each code (vmctl status prints it; docs/cli.md lists the same)."""
