"""RemoteVending over a real SQLite journal: commit before side effects, dedupe, recovery."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cbor2

from protocols.mdb import events as ev
from vmc.cloud.topics import Topics
from vmc.journal import Journal
from vmc.services import bus_messages as bus
from vmc.services.remote_vend import RemoteVending
from vmc.transaction import Engine, EngineConfig, Money, Txn, TxnState


def _rig(path: Path, sent: list[bus.BusCommand]) -> RemoteVending:
    journal = Journal(path)
    counter = itertools.count(1)
    engine = Engine(EngineConfig(Money(978, 2)), lambda: f"txn{next(counter)}")
    clock = itertools.count(100)

    def send(command: bus.BusCommand) -> bool:
        # Every bus command must find its cause already in the journal.
        assert journal.outbox_size() > 0 or journal.open_txn() is not None
        sent.append(command)
        return True

    remote = RemoteVending(engine, journal, Topics("m1"), send, clock=lambda: float(next(clock)))
    remote.recover()
    remote.handle_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED))
    return remote


def _command(op: str, cmd_id: str, **fields: object) -> bytes:
    return cbor2.dumps({"v": 1, "id": cmd_id, "op": op, "expires": 1e12, **fields})


def test_repeated_command_gets_the_first_reply_and_changes_nothing(tmp_path: Path) -> None:
    sent: list[bus.BusCommand] = []
    remote = _rig(tmp_path / "j.sqlite3", sent)
    remote.handle_command(_command("lock", "L1"))
    remote.handle_command(_command("lock", "L1"))
    assert sent == [bus.BeginSession(None)]
    replies = [
        cbor2.loads(r.payload) for r in remote.journal.pending(10) if r.topic.endswith("/reply")
    ]
    assert len(replies) == 2
    assert replies[0] == replies[1]
    assert replies[0]["ok"]


def test_events_carry_increasing_seq_and_unique_ids(tmp_path: Path) -> None:
    remote = _rig(tmp_path / "j.sqlite3", [])
    for _ in range(5):
        remote.handle_bus(ev.CashSaleReported(3, 100))
    rows = remote.journal.pending(10)
    bodies = [cbor2.loads(r.payload) for r in rows]
    assert [b["seq"] for b in bodies] == [r.seq for r in rows]
    assert len({b["id"] for b in bodies}) == 5
    assert remote.journal.delivered_through(rows[1].seq) == 2
    assert remote.journal.outbox_size() == 3


def test_restart_after_approval_reports_unknown_once(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    sent: list[bus.BusCommand] = []
    remote = _rig(path, sent)
    remote.handle_command(_command("lock", "L1"))
    txn_id = "txn1"
    remote.handle_bus(ev.VendRequested(1, 9, 200))
    remote.handle_command(_command("paid", "P1", txn_id=txn_id, amount=200))
    assert bus.ApproveVend(1, 200) in sent
    remote.journal.close()  # the power goes here

    again: list[bus.BusCommand] = []
    restarted = _rig(path, again)
    assert restarted.journal.txn(txn_id).state is TxnState.UNKNOWN  # type: ignore[union-attr]
    assert not any(isinstance(c, bus.ApproveVend) for c in again)
    vends = [cbor2.loads(r.payload) for r in restarted.journal.pending(50)]
    unknown = [b for b in vends if b.get("type") == "txn.vend"]
    assert [b["result"] for b in unknown] == ["unknown"]
    restarted.journal.close()
    third = _rig(path, [])  # a second restart settles nothing more
    bodies = [cbor2.loads(r.payload) for r in third.journal.pending(50)]
    assert len([b for b in bodies if b.get("type") == "txn.vend"]) == 1
    assert third.journal.txn_history(txn_id) == [
        TxnState.LOCKED,
        TxnState.REQUESTED,
        TxnState.APPROVING,
        TxnState.UNKNOWN,
    ]


def _bodies(remote: RemoteVending, leaf: str) -> list[dict[str, object]]:
    rows = remote.journal.pending(100)
    return [cbor2.loads(r.payload) for r in rows if r.topic.endswith(leaf)]


def test_refund_is_judged_from_the_journal_after_a_restart(tmp_path: Path) -> None:
    """The engine forgets closed transactions on a restart; the refund reads the journal."""
    path = tmp_path / "j.sqlite3"
    remote = _rig(path, [])
    remote.handle_command(_command("lock", "L1"))
    remote.handle_bus(ev.VendRequested(1, 9, 200))
    remote.handle_command(_command("paid", "P1", txn_id="txn1", amount=180))
    remote.handle_bus(ev.VendApprovedSent(1, 180))
    remote.handle_bus(ev.VendSucceeded(1, 9, 180))
    remote.handle_command(_command("lock", "L2"))  # open: not refundable
    remote.journal.close()

    restarted = _rig(path, [])
    assert "txn1" not in restarted.engine.closed
    restarted.handle_command(_command("refund", "R1", txn_id="txn1", amount=80, reason="dented"))
    restarted.handle_command(_command("refund", "R2", txn_id="txn1", amount=101))
    restarted.handle_command(_command("refund", "R3", txn_id="txn2"))  # cancelled at restart
    restarted.handle_command(_command("refund", "R4", txn_id="nope"))
    restarted.handle_command(_command("refund", "R1", txn_id="txn1", amount=80))
    replies = {str(b["id"]): b for b in _bodies(restarted, "/reply")}
    assert replies["R1"]["ok"]
    assert replies["R1"]["result"] == {
        "refund_id": "R1",
        "txn_id": "txn1",
        "amount": 80,
        "charged": 180,
        "refunded": 80,
        "duplicate": False,
    }
    assert [replies[i]["code"] for i in ("R2", "R3", "R4")] == [
        "amount_mismatch",
        "wrong_state",
        "no_such_txn",
    ]
    refunds = [b for b in _bodies(restarted, "/events") if b["type"] == "txn.refund"]
    assert len(refunds) == 1  # the repeated R1 recorded nothing
    assert {k: refunds[0][k] for k in ("txn_id", "refund_id", "amount", "result", "selection")} == {
        "txn_id": "txn1",
        "refund_id": "R1",
        "amount": 80,
        "result": "success",
        "selection": 9,
    }
    assert restarted.journal.refunds_of("txn1")[0].reason == "dented"

    restarted.handle_command(_command("sales.query", "Q1", **{"from": "1970-01-01"}))
    query = _bodies(restarted, "/reply")[-1]
    result = query["result"]
    assert isinstance(result, dict)
    assert result["total"] == {"count": 1, "amount": 180}
    assert result["refunds"]["success"] == {"count": 1, "amount": 80}
    assert result["net"] == 100


class _DurabilityJournal(Journal):
    """A real journal that notes, per commit, its transitions' states and whether it was fsynced."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits: list[tuple[tuple[TxnState, ...], bool]] = []

    def commit(self, transitions: Iterable[Txn], *args: Any, durable: bool, **kw: Any) -> None:
        transitions = list(transitions)
        self.commits.append((tuple(t.state for t in transitions), durable))
        super().commit(transitions, *args, durable=durable, **kw)


def test_a_request_is_published_unsynced_and_its_approval_fsynced(tmp_path: Path) -> None:
    """A txn.request moves no money (docs/cloud-api.md 6.4): its commit is not fsynced; the
    approval's is, before the bus hears it, and so is any other event's."""
    journal = _DurabilityJournal(tmp_path / "j.sqlite3")
    sent: list[bus.BusCommand] = []
    counter = itertools.count(1)
    engine = Engine(EngineConfig(Money(978, 2)), lambda: f"txn{next(counter)}")

    def send(command: bus.BusCommand) -> bool:
        sent.append(command)
        return True

    remote = RemoteVending(engine, journal, Topics("m1"), send)
    remote.handle_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED))
    remote.handle_command(_command("lock", "L1"))
    remote.handle_bus(ev.VendRequested(1, 9, 200))
    remote.handle_command(_command("paid", "P1", txn_id="txn1", amount=200))
    remote.handle_bus(ev.VendApprovedSent(1, 200))
    remote.handle_bus(ev.VendSucceeded(1, 9, 200))
    remote.handle_bus(ev.CashSaleReported(3, 100))
    durable = {states: flag for states, flag in journal.commits if states}
    assert durable[(TxnState.LOCKED,)] is True  # a lock's reply is a promise
    assert durable[(TxnState.REQUESTED,)] is False
    assert durable[(TxnState.APPROVING,)] is True
    assert durable[(TxnState.VENDED,)] is True
    assert journal.commits[-1] == ((), True)  # a cash sale's event
    assert bus.ApproveVend(1, 200) in sent
