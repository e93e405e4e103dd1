"""``vmctl status``: the bus's state in one word and the fault codes, from the status itself."""

from __future__ import annotations

from typing import Any

import pytest

from protocols.mdb.events import State
from vmc.control.status import CHECKS, Code, bus_state, status_codes
from vmc.services.bus import BusState


@pytest.mark.parametrize(
    ("supervisor", "healthy", "link_up", "reader", "wanted"),
    [
        (BusState.WAITING_FOR_PORT, True, False, None, "waiting_for_port"),
        (BusState.RESTARTING, True, False, State.ENABLED, "restarting"),
        (BusState.SERVING, False, False, State.ENABLED, "not_responding"),
        (BusState.STARTING, True, False, None, "starting"),
        (BusState.SERVING, True, False, State.ENABLED, "no_link"),  # a stale reader: unsaid
        (BusState.SERVING, True, True, State.INACTIVE, "polling"),
        (BusState.SERVING, True, True, State.DISABLED, "polling"),
        (BusState.SERVING, True, True, State.ENABLED, "enabled"),
        (BusState.SERVING, True, True, State.SESSION_IDLE, "in_session"),
        (BusState.SERVING, True, True, State.VEND, "in_session"),
        (BusState.STOPPED, True, True, State.VEND, "stopped"),
    ],
)
def test_bus_state(
    supervisor: BusState, healthy: bool, link_up: bool, reader: State | None, wanted: str
) -> None:
    assert bus_state(supervisor, healthy, link_up, reader).value == wanted


def _status(**changes: Any) -> dict[str, Any]:
    """A healthy machine's status, with ``section={key: value}`` changed."""
    status: dict[str, Any] = {
        "bus": {"state": "enabled", "reader_for_s": 100.0},
        "cloud": {"state": "connected", "oldest_unsent_age_s": None},
        "reporter": {"state": "idle", "last_read": None},
        "stock": {"need_loading": False},
    }
    for section, values in changes.items():
        status[section] = {**status[section], **values}
    return status


def _read(ok: bool, valid: bool, size: int, step: str) -> dict[str, Any]:
    return {"reporter": {"last_read": {"ok": ok, "valid": valid, "size": size, "step": step}}}


@pytest.mark.parametrize(
    ("changes", "codes"),
    [
        ({}, []),
        ({"bus": {"state": "waiting_for_port"}}, ["mdb_port_missing"]),
        ({"bus": {"state": "restarting"}}, ["bus_process_down"]),
        ({"bus": {"state": "not_responding"}}, ["bus_process_down"]),
        ({"bus": {"state": "no_link"}}, ["no_mdb_link"]),
        ({"bus": {"state": "starting"}}, []),
        ({"bus": {"state": "polling", "reader_for_s": 3.0}}, []),  # the VMC may be setting up
        ({"bus": {"state": "polling", "reader_for_s": 10.0}}, ["reader_disabled_by_vmc"]),
        ({"cloud": {"state": "offline", "oldest_unsent_age_s": 900.0}}, ["cloud_offline"]),
        ({"cloud": {"state": "not_configured", "oldest_unsent_age_s": 900.0}}, []),
        ({"cloud": {"oldest_unsent_age_s": 59.0}}, []),
        ({"cloud": {"oldest_unsent_age_s": 60.0}}, ["outbox_stuck"]),
        (_read(False, False, 0, "first handshake"), ["dex_silent"]),
        (_read(False, False, 0, "open"), ["dex_read_failed"]),
        (_read(False, False, 512, "transfer"), ["dex_read_failed"]),
        (_read(True, False, 512, ""), ["dex_read_failed"]),
        (_read(True, True, 512, ""), []),
        ({"stock": {"need_loading": True}}, ["need_loading"]),
        (
            {
                "bus": {"state": "no_link"},
                "cloud": {"state": "offline"},
                "stock": {"need_loading": True},
            },
            ["no_mdb_link", "cloud_offline", "need_loading"],
        ),
    ],
)  # fmt: skip
def test_status_codes(changes: dict[str, Any], codes: list[str]) -> None:
    assert status_codes(_status(**changes)) == codes


def test_every_code_says_what_to_check() -> None:
    assert set(CHECKS) == set(Code)
