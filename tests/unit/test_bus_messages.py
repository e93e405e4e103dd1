"""The daemon <-> bus process messages: round trips and refusal of malformed input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import RemoteProtocolError
from protocols.exe import events as exe
from protocols.mdb import events as ev
from vmc.services import bus_messages as msg

SAMPLES: list[object] = [
    msg.BeginSession(None),
    msg.BeginSession(250),
    msg.BeginSession(150, 0, 121.0),
    msg.ApproveVend(4, 120),
    msg.DenyVend(4),
    msg.CancelSession(),
    msg.DecideRevalue(approved=True),
    msg.ShowText("HELLO", 1.5),
    msg.Stop(),
    msg.Ready("pty:///dev/pts/3", realtime=True),
    msg.Heartbeat("ENABLED", 10, 0.02, 100, 12),
    msg.CommandRefused("ApproveVend", "late"),
    msg.PortFailed("gone"),
    ev.StateChanged(ev.State.ENABLED, ev.State.VEND),
    ev.VendDeniedSent(3, ev.DenyReason.APPROVAL_TIMEOUT),
    ev.VendOutcomeUnknown(2, 5, 100, "reader reset"),
    ev.SessionRefused("reader disabled"),
    ev.VendRequested(1, 9, 150, negative=True),
    msg.SetPrices(((1, 150), (2, 120))),
    exe.LinkChanged(up=False),
    exe.VmcStatus(0x42, inhibited=True, free_vend=False),
    exe.ExeFault(exe.Fault.PNAK, "VEND", "6 tries"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    assert msg.decode(msg.encode(message)) == message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"type": "Nope"}',
        b'{"vend_id": 1}',
        b'{"type": "ApproveVend", "vend_id": 1}',
        b'{"type": "ApproveVend", "vend_id": 1, "amount": 2, "extra": 3}',
        b'{"type": "StateChanged", "old": "FLYING", "new": "VEND"}',
        b'{"type": "StateChanged", "old": 3, "new": "VEND"}',
        b'{"type": "SetPrices", "prices": [[1, "x"]]}',
        b'{"type": "ExeFault", "fault": "LOUD", "command": "VEND", "detail": ""}',
    ],
)
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        msg.decode(data)


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        msg.decode(data)
