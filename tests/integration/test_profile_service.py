"""The compatibility self-test's service over a real journal: facts settle, are kept, and reach
the cloud's outbox as ``device.profile`` only when they change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2

from protocols.evadts import parse
from protocols.mdb import events as ev
from protocols.mdb.commands import Feature
from tests.samples import AUDIT
from vmc.cloud.topics import Topics
from vmc.journal import Journal
from vmc.services import bus_messages as msg
from vmc.services.profile_service import PROFILE, SETTLE_S, ProfileService
from vmc.services.reporter import ReadOutcome

INIT = (
    ev.Configured(3, 16, 2, 3, 1),
    ev.PricesSet(10000, 5),
    ev.VmcIdentified("SIM", "SIMVMC000001", "vmc-sim     ", 0x0100),
    ev.FeaturesEnabled(int(Feature.ALWAYS_IDLE | Feature.WIDE_MONEY)),
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def service(journal: Journal, clock: Clock, *, cloud: bool = True, dex: str | None = "ucs") -> Any:
    return ProfileService(
        journal, dex, topics=Topics("m1") if cloud else None, clock=clock, monotonic=clock
    )


def profiles(journal: Journal) -> list[dict[str, Any]]:
    events = [cbor2.loads(row.payload) for row in journal.pending(1000)]
    return [e for e in events if e["type"] == "device.profile"]


def settle(svc: ProfileService, clock: Clock) -> None:
    svc.tick()
    clock.now += SETTLE_S
    svc.tick()


def test_a_vmcs_setup_settles_into_one_event(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    clock = Clock()
    svc = service(journal, clock)
    for report in INIT:
        svc.handle_bus(report)
        clock.now += 0.1
        svc.tick()
    assert profiles(journal) == []  # still settling
    svc.handle_bus(msg.Heartbeat("ENABLED", 50, 0.01, 0, 0, 50, 0.005, 0.0002))
    settle(svc, clock)
    (event,) = profiles(journal)
    assert event["mdb"]["vmc_level"] == 3
    assert event["mdb"]["vmc"] == {
        "manufacturer": "SIM",
        "serial": "SIMVMC000001",
        "model": "vmc-sim",
        "software_version": 256,
    }
    assert event["mdb"]["features"]["always_idle"] is True
    assert event["mdb"]["timing"]["answers"] == 50
    assert event["verdicts"]["select_first"]["answer"] == "yes"
    assert "mdb.vmc_level" in event["changed"]
    assert "verdicts.select_first" in event["changed"]
    assert event["updated_at"] == event["at"]
    assert svc.profile()["mdb"]["vmc_level"] == 3
    assert journal.state(PROFILE) is not None
    journal.close()


def test_the_same_setup_again_and_new_timing_change_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    clock = Clock()
    svc = service(journal, clock)
    for report in INIT:
        svc.handle_bus(report)
    settle(svc, clock)
    svc.handle_bus(ev.ReaderReset(bus_reset=True))  # the VMC restarted
    for report in INIT:
        svc.handle_bus(report)
    svc.handle_bus(msg.Heartbeat("ENABLED", 900, 0.01, 0, 0, 900, 0.09, 0.004))
    settle(svc, clock)
    assert len(profiles(journal)) == 1
    svc.handle_bus(ev.Configured(2, 16, 2, 2, 1))  # now it runs at level 2
    settle(svc, clock)
    _, second = profiles(journal)
    assert second["changed"] == [
        "mdb.features",
        "mdb.operating_level",
        "mdb.vmc_level",
        "verdicts.select_first",
        "verdicts.wide_prices",
    ]
    assert second["verdicts"]["select_first"] == {
        "label": "select-first",
        "answer": "no",
        "why": "always-idle needs level 3, not 2",
    }
    journal.close()


def test_audit_reads_add_the_dex_facts_and_a_failed_one_is_no_change(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    clock = Clock()
    svc = service(journal, clock)
    audit = parse(AUDIT)
    svc.read_done(ReadOutcome("r1", clock.now, True, valid=True, audit=audit))
    settle(svc, clock)
    (event,) = profiles(journal)
    assert event["dex"]["answered"] is True
    assert event["dex"]["protocol"] == "ucs"
    assert "PA2" in event["dex"]["fields"]
    assert event["verdicts"]["slot_stock"]["answer"] == "yes"
    failed = ReadOutcome("r2", clock.now, False, step="handshake", reason="no answer")
    svc.read_done(failed)
    settle(svc, clock)
    assert len(profiles(journal)) == 1
    assert svc.profile()["dex"]["last_error"] == "handshake: no answer"
    assert svc.profile()["dex"]["answered"] is True  # it answered before: a capability
    journal.close()


def test_kept_across_a_restart_and_sent_once_a_cloud_is_there(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    clock = Clock()
    journal = Journal(path)
    svc = service(journal, clock, cloud=False)
    for report in INIT:
        svc.handle_bus(report)
    settle(svc, clock)
    assert profiles(journal) == []  # no cloud: nothing queued
    learned = svc.profile()
    journal.close()

    journal = Journal(path)
    svc = service(journal, clock, cloud=True)
    assert svc.profile() == learned
    svc.tick()
    (event,) = profiles(journal)
    assert event["mdb"]["vmc_level"] == 3
    settle(svc, clock)
    assert len(profiles(journal)) == 1  # once
    journal.close()

    journal = Journal(path)
    svc = service(journal, clock, cloud=True, dex=None)  # the DEX port was taken out
    settle(svc, clock)
    (_, event) = profiles(journal)
    assert event["changed"][:2] == ["dex.configured", "dex.protocol"]
    assert event["verdicts"]["dex"] == {
        "label": "DEX audit",
        "answer": "no",
        "why": "no DEX port configured",
    }
    journal.close()
