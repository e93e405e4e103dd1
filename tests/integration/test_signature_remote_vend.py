"""Signed commands through RemoteVending and a real SQLite journal: a forged or replayed
command never reaches the engine, the id table or the stock, and is reported."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.mdb import events as ev
from vmc.cloud import signing
from vmc.cloud.signing import CommandKeys
from vmc.cloud.topics import Topics
from vmc.journal import Journal
from vmc.services import bus_messages as bus
from vmc.services.remote_vend import RemoteVending
from vmc.transaction import Engine, EngineConfig, Money

BACKEND = Ed25519PrivateKey.generate()
FORGER = Ed25519PrivateKey.generate()
START = 1_000.0


class _Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _rig(path: Path, sent: list[bus.BusCommand], keys: CommandKeys, clock: _Clock) -> RemoteVending:
    journal = Journal(path)
    counter = itertools.count(1)
    engine = Engine(EngineConfig(Money(978, 2)), lambda: f"txn{next(counter)}")

    def send(command: bus.BusCommand) -> bool:
        sent.append(command)
        return True

    remote = RemoteVending(engine, journal, Topics("m1"), send, clock=clock, keys=keys)
    remote.recover()
    remote.handle_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED))
    return remote


def _body(op: str, cmd_id: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": cmd_id, "op": op, "expires": START + 30, **fields}


def _signed(op: str, cmd_id: str, key: Ed25519PrivateKey = BACKEND, **fields: Any) -> bytes:
    return cbor2.dumps(signing.sign(_body(op, cmd_id, **fields), key))


def _published(remote: RemoteVending, leaf: str) -> list[dict[str, Any]]:
    rows = remote.journal.pending(200)
    return [cbor2.loads(r.payload) for r in rows if r.topic.endswith(leaf)]


def _reply(remote: RemoteVending, cmd_id: str) -> dict[str, Any]:
    return [r for r in _published(remote, "/reply") if r["id"] == cmd_id][-1]


def _requested(remote: RemoteVending, lock_id: str) -> None:
    remote.handle_command(cbor2.dumps(_body("lock", lock_id)))  # a lock needs no signature
    remote.handle_bus(ev.VendRequested(1, 9, 200))


def _approvals(sent: list[bus.BusCommand]) -> list[bus.BusCommand]:
    return [c for c in sent if isinstance(c, bus.ApproveVend)]


def test_signed_paid_is_accepted(tmp_path: Path) -> None:
    sent: list[bus.BusCommand] = []
    remote = _rig(tmp_path / "j.sqlite3", sent, CommandKeys([BACKEND.public_key()]), _Clock())
    _requested(remote, "L1")
    remote.handle_command(_signed("paid", "P1", txn_id="txn1", amount=200))
    assert _reply(remote, "P1")["ok"]
    assert _approvals(sent) == [bus.ApproveVend(1, 200)]


def test_forged_paid_with_a_real_id_is_refused_reported_and_does_not_block_the_real_one(
    tmp_path: Path,
) -> None:
    sent: list[bus.BusCommand] = []
    remote = _rig(tmp_path / "j.sqlite3", sent, CommandKeys([BACKEND.public_key()]), _Clock())
    _requested(remote, "L1")
    remote.handle_command(_signed("paid", "P1", FORGER, txn_id="txn1", amount=200))
    remote.handle_command(cbor2.dumps(_body("paid", "P1", txn_id="txn1", amount=200)))
    replies = [r for r in _published(remote, "/reply") if r["id"] == "P1"]
    assert [(r["ok"], r["code"]) for r in replies] == [(False, "bad_signature")] * 2
    events = [e for e in _published(remote, "/events") if e["type"] == "security.bad_signature"]
    assert [(e["command_id"], e["op"], e["reason"]) for e in events] == [
        ("P1", "paid", "unknown_key"),
        ("P1", "paid", "missing"),
    ]
    assert events[0]["kid"] == signing.key_id(FORGER.public_key())
    assert not _approvals(sent)
    assert remote.journal.known_reply("P1") is None
    remote.handle_command(_signed("paid", "P1", txn_id="txn1", amount=200))
    assert _reply(remote, "P1")["ok"]
    assert _approvals(sent) == [bus.ApproveVend(1, 200)]


def test_replay_of_a_signed_paid_after_it_expired_is_refused_expired(tmp_path: Path) -> None:
    sent: list[bus.BusCommand] = []
    clock = _Clock()
    remote = _rig(tmp_path / "j.sqlite3", sent, CommandKeys([BACKEND.public_key()]), clock)
    captured = _signed("paid", "P1", txn_id="txn1", amount=200)
    _requested(remote, "L1")
    clock.now = START + 31
    remote.handle_command(captured)
    assert _reply(remote, "P1")["code"] == "expired"
    assert not _approvals(sent)


def test_replay_of_a_signed_refund_under_another_id_is_refused(tmp_path: Path) -> None:
    remote = _rig(tmp_path / "j.sqlite3", [], CommandKeys([BACKEND.public_key()]), _Clock())
    captured = signing.sign(_body("refund", "R1", txn_id="txn1", amount=50), BACKEND)
    remote.handle_command(cbor2.dumps(captured | {"id": "R2"}))
    assert _reply(remote, "R2")["code"] == "bad_signature"
    assert remote.journal.refund("R2") is None


def test_unsigned_stock_and_cash_commands_are_refused_before_anything_is_applied(
    tmp_path: Path,
) -> None:
    remote = _rig(tmp_path / "j.sqlite3", [], CommandKeys([BACKEND.public_key()]), _Clock())
    for op, fields in (
        ("planogram.set", {"planogram": {"version": 1, "selections": []}}),
        ("stock.refill", {"lines": [{"selection": 1, "amount": 5}]}),
        ("stock.restock", {"collect": True}),
        ("cash.collect", {}),
        ("voucher", {"voucher_id": "V1", "value": 100}),
        ("credit", {"credit_id": "C1", "amount": 100}),
    ):
        remote.handle_command(cbor2.dumps(_body(op, f"id-{op}", **fields)))
        assert _reply(remote, f"id-{op}")["code"] == "bad_signature", op
    assert remote.engine.credit is None


def test_no_signature_keys_means_unsigned_paid_works_as_before(tmp_path: Path) -> None:
    sent: list[bus.BusCommand] = []
    remote = _rig(tmp_path / "j.sqlite3", sent, CommandKeys(), _Clock())
    _requested(remote, "L1")
    remote.handle_command(cbor2.dumps(_body("paid", "P1", txn_id="txn1", amount=200)))
    assert _reply(remote, "P1")["ok"]
    assert _approvals(sent) == [bus.ApproveVend(1, 200)]
    assert not [e for e in _published(remote, "/events") if e["type"].startswith("security.")]
