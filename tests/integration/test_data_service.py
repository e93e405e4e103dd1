"""Data requests over a real journal: answered in the read's own commit, a pending one answered
once after a restart, and ``vmctl``'s request answered into its rows, never to the cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2

from tests.samples import audit_bytes
from vmc.cloud import messages as m
from vmc.cloud.topics import Topics
from vmc.config import DexConfig
from vmc.journal import Journal
from vmc.services.audit_store import AuditStore
from vmc.services.data_service import DataService
from vmc.services.local_ops import LocalOps
from vmc.services.reporter import ReadContext, Reporter
from vmc.services.stock_book import StockBook

CONFIG = {"versions": {"vmc": "test"}}
NOW = 1000.0


def _service(tmp_path: Path) -> DataService:
    journal = Journal(tmp_path / "journal.sqlite3")
    store = AuditStore(tmp_path / "audits", 3)
    reporter = Reporter(DexConfig(port="pty:///dev/null"), journal, store, Topics("m1"))
    return DataService(journal, reporter, lambda: CONFIG, topics=Topics("m1"), clock=lambda: NOW)


def _sent(journal: Journal) -> list[dict[str, Any]]:
    return [cbor2.loads(row.payload) for row in journal.pending(1000)]


def _ask(service: DataService, request_id: str, **parts: bool) -> None:
    parts = {"report": False, "config": False, **parts}
    cmd = m.DataRequest(f"cmd-{request_id}", NOW + 30, request_id, parts["report"], parts["config"])
    service.handle_command(cmd)


def test_data_request_is_answered_in_the_commit_of_its_read(tmp_path: Path) -> None:
    service = _service(tmp_path)
    assert service.reporter is not None
    _ask(service, "r1", report=True, config=True)
    service.read_started("read-1")
    service.read_block("read-1", 200)
    service.reporter.process(audit_bytes(), ReadContext("read-1", NOW, "request"))
    sent = _sent(service.journal)
    kinds = [s.get("type") for s in sent]
    assert kinds == [None, "data.progress", "audit.report", "audit.summary", "data.result"]
    result = sent[-1]
    assert (result["request_id"], result["ok"], result["read_id"]) == ("r1", True, "read-1")
    assert result["report"]["valid"] is True
    assert result["config"] == CONFIG
    assert service.journal.pending_requests() == []
    assert service.book.pending == ()
    assert service.book.read is None


def test_data_request_pending_at_a_crash_is_answered_once_after_restart(tmp_path: Path) -> None:
    service = _service(tmp_path)
    _ask(service, "r1", report=True)
    service.read_started("read-1")
    service.journal.close()  # the daemon dies mid-read

    for _ in range(2):  # two restarts: the second finds nothing left to answer
        again = _service(tmp_path)
        again.recover()
        again.journal.close()
    journal = Journal(tmp_path / "journal.sqlite3")
    results = [s for s in _sent(journal) if s.get("type") == "data.result"]
    assert [(r["request_id"], r["ok"], r["read_id"]) for r in results] == [("r1", False, None)]
    assert results[0]["error"]["step"] == "restart"
    assert journal.pending_requests() == []


def test_data_request_from_vmctl_is_answered_into_its_rows_only(tmp_path: Path) -> None:
    service = _service(tmp_path)
    journal = service.journal
    assert service.reporter is not None
    command = {"id": "op1", "op": "data.request", "report": True, "expires": NOW + 30}
    reply = LocalOps(journal, StockBook(journal, None), service).apply(command).reply
    assert reply["result"]["request_id"] == "local:op1"
    assert cbor2.loads(journal.local_reply("op1") or b"")["result"] == reply["result"]
    _ask(service, "cloud-1", report=True)  # the cloud asks too: the same read answers both
    service.read_started("read-1")
    service.read_block("read-1", 245)
    row = journal.data_request("local:op1")
    assert row is not None
    assert (row.received, row.blocks, row.done) == (245, 1, False)
    service.reporter.process(audit_bytes(), ReadContext("read-1", NOW, "local"))
    row = journal.data_request("local:op1")
    assert row is not None
    assert row.done
    assert row.result is not None
    local = cbor2.loads(row.result)
    assert (local["ok"], local["read_id"]) == (True, "read-1")
    assert Path(local["file"]).read_bytes() == audit_bytes()
    results = [s for s in _sent(journal) if s.get("type") == "data.result"]
    assert [r["request_id"] for r in results] == ["cloud-1"]
    (progress,) = [s for s in _sent(journal) if s.get("type") == "data.progress"]
    assert progress["request_ids"] == ["cloud-1"]
