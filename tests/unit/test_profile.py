"""The compatibility self-test's rules (sans-I/O): facts from the bus and the audit, verdicts."""

from __future__ import annotations

import dataclasses
import json
from functools import reduce

from hypothesis import given
from hypothesis import strategies as st

from protocols.evadts import parse
from protocols.evadts.records import Cash, Device
from protocols.evadts.writer import write
from protocols.mdb import events as ev
from protocols.mdb.commands import ExpansionRequestId, Feature, parse_command
from sim.vmc_counters import SalesCounters, audit_from_counters
from sim.vmc_master import VmcIdentity
from tests.samples import machine_audit
from vmc import profile as p
from vmc.services import bus_messages as msg

INIT = (
    ev.ReaderReset(bus_reset=False),
    ev.Configured(3, 16, 2, 3, 1),
    ev.PricesSet(10000, 5),
    ev.VmcIdentified("SIM", "SIMVMC000001", "vmc-sim     ", 0x0100),
    ev.FeaturesEnabled(int(Feature.ALWAYS_IDLE | Feature.WIDE_MONEY)),
    ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED),
)


def facts(*reports: object, start: p.MdbFacts | None = None) -> p.MdbFacts:
    return reduce(p.observe, reports, start or p.MdbFacts())


def answers(profile: p.Profile) -> dict[str, str]:
    return {v.key: v.answer.value for v in p.verdicts(profile)}


def test_a_level_3_vmc_that_enables_always_idle() -> None:
    mdb = facts(*INIT)
    assert mdb == p.MdbFacts(
        vmc_level=3,
        operating_level=3,
        columns=16,
        rows=2,
        display_info=1,
        max_price=10000,
        min_price=5,
        identity=p.VmcIdentity("SIM", "SIMVMC000001", "vmc-sim", 0x0100),
        features=int(Feature.ALWAYS_IDLE | Feature.WIDE_MONEY),
    )
    said = answers(p.Profile(mdb))
    assert {k: said[k] for k in ("remote_vend", "select_first", "test_vends", "wide_prices")} == {
        "remote_vend": "yes",
        "select_first": "yes",
        "test_vends": "yes",
        "wide_prices": "yes",
    }
    assert said["display"] == "yes"
    assert said["cash_sales"] == "unknown"
    assert said["dex"] == "no"  # no DEX port configured


def test_the_simulated_vmc_says_who_it_is_as_a_vmc_does() -> None:
    identity = VmcIdentity("ABC", "SN-42", "M1", 0x0203)
    command = parse_command(bytes((0x17, 0x00)) + identity.to_bytes(), wide=False)
    assert isinstance(command, ExpansionRequestId)
    said = facts(ev.VmcIdentified(command.manufacturer, command.serial, command.model, 0x0203))
    assert said.identity == p.VmcIdentity("ABC", "SN-42", "M1", 0x0203)


def test_lower_levels_say_why_not() -> None:
    level2 = answers(p.Profile(facts(ev.Configured(2, 0, 0, 2))))
    assert (level2["select_first"], level2["test_vends"], level2["display"]) == ("no", "yes", "no")
    level1 = p.verdicts(p.Profile(facts(ev.Configured(3, 0, 0, 1))))
    marked = next(v for v in level1 if v.key == "test_vends")
    assert marked.answer is p.Answer.NO
    assert "level 1 has no payment type" in marked.why
    first = next(v for v in level1 if v.key == "select_first")
    assert first.why == "always-idle needs level 3, not 1"


def test_a_new_setup_negotiates_the_options_again() -> None:
    mdb = facts(*INIT)
    again = facts(ev.Configured(3, 16, 2, 3, 1), start=mdb)
    assert again.features is None
    assert answers(p.Profile(again))["select_first"] == "no"
    assert facts(ev.FeaturesEnabled(mdb.features or 0), start=again) == mdb


def test_nothing_is_known_before_the_vmc_sets_the_reader_up() -> None:
    said = p.verdicts(p.Profile())
    dex = {"dex", "slot_stock", "slot_prices", "low_change", "machine_events"}
    assert {v.answer for v in said if v.key not in dex} == {p.Answer.UNKNOWN}
    assert {v.answer for v in said if v.key in dex} == {p.Answer.NO}  # no DEX port
    assert said[0].why == "the VMC has not set the reader up yet (no SETUP seen)"


def test_cash_sales_are_seen_once() -> None:
    mdb = facts(ev.CashSaleReported(3, 150))
    assert mdb.cash_sales_seen
    assert facts(ev.CashSaleReported(4, 100), start=mdb) is mdb  # no change, no new object


def test_what_an_audit_holds() -> None:
    audit = parse(write(machine_audit()))
    dex = p.dex_facts(audit, "ucs")
    assert dex.fields == (
        "CA1",
        "CA2",
        "CB1",
        "DA1",
        "DA2",
        "EA1",
        "EA2",
        "ID1",
        "ID4",
        "PA1",
        "PA2",
        "VA1",
    )
    assert (dex.selections, dex.priced, dex.counted, dex.tube_value) == (40, 40, 40, False)
    said = {v.key: v for v in p.verdicts(p.Profile(dex=dex))}
    assert said["slot_stock"].answer is p.Answer.YES
    assert said["slot_stock"].why == "PA2 vend counts for 40 of 40 selections (PA1)"
    assert said["low_change"].answer is p.Answer.NO
    assert said["machine_events"].why == "EA1 and EA2 in the audit"
    tubes = dataclasses.replace(audit, cash=Cash(Device("CC-1"), other=(("CA15", "2500"),)))
    assert p.dex_facts(tubes, "ucs").tube_value
    assert "CA15" in p.dex_facts(tubes, "ucs").fields


def test_the_simulated_vmcs_audit_orders_ca2_before_ca15() -> None:
    counters = SalesCounters()
    counters.vended(3, 150, cash=False)
    fields = p.dex_facts(parse(audit_from_counters(counters)), "ddcmp").fields
    assert fields.index("CA2") < fields.index("CA15")


def test_a_dex_port_that_never_answered() -> None:
    dex = p.DexFacts(configured=True, protocol="ddcmp")
    fresh = {v.key: v for v in p.verdicts(p.Profile(dex=dex))}
    assert fresh["dex"].answer is fresh["slot_stock"].answer is p.Answer.UNKNOWN
    failed = dataclasses.replace(dex, last_error="handshake: no ENQ answer")
    said = {v.key: v for v in p.verdicts(p.Profile(dex=failed))}
    assert said["dex"].answer is p.Answer.NO
    assert said["dex"].why == "no read worked yet: handshake: no ENQ answer"


def _beat(polls: int, answers: int, total_s: float, worst_s: float) -> msg.Heartbeat:
    return msg.Heartbeat("ENABLED", polls, 0.01, 0, 0, answers, total_s, worst_s)


def test_timing_across_a_restart_of_the_bus_process() -> None:
    tracker = p.TimingTracker()
    assert tracker.timing() == p.BusTiming()
    tracker.heard(_beat(100, 100, 0.010, 0.0002), 1.0)
    tracker.heard(_beat(140, 140, 0.014, 0.0003), 2.0)
    assert tracker.timing() == p.BusTiming(40.0, 140, 0.1, 0.3)
    tracker.heard(_beat(20, 20, 0.004, 0.0008), 3.0)  # a new bus process counts from 0
    timing = tracker.timing()
    assert (timing.answers, timing.answer_max_ms, timing.polls_per_s) == (160, 0.8, None)
    assert timing.answer_mean_ms == round(0.018 / 160 * 1000, 3)
    slow = p.Profile(timing=dataclasses.replace(timing, answer_max_ms=5.2))
    (late,) = [v for v in p.verdicts(slow) if v.key == "answer_timing"]
    assert late.answer is p.Answer.NO


def test_timing_is_never_a_change() -> None:
    before = p.Profile(facts(*INIT))
    after = dataclasses.replace(before, timing=p.BusTiming(12.0, 500, 0.08, 0.4))
    assert p.changed_keys(before, after) == []
    level2 = dataclasses.replace(before, mdb=facts(ev.Configured(2, 16, 2, 2, 1), start=before.mdb))
    assert p.changed_keys(before, level2) == [
        "mdb.features",
        "mdb.operating_level",
        "mdb.vmc_level",
        "verdicts.select_first",
        "verdicts.wide_prices",
    ]


def test_what_a_technician_reads() -> None:
    audit = parse(write(machine_audit()))
    profile = p.Profile(facts(*INIT), p.BusTiming(40.0, 140, 0.1, 0.3), p.dex_facts(audit, "ucs"))
    text = p.format_profile(p.to_json(profile))
    assert "VMC       SIM vmc-sim, serial SIMVMC000001, software 0x0100" in text
    assert "level 3 (reader at 3); always idle on, expanded currency on, negative vend off" in text
    assert "Prices    max 100.00, min 0.05" in text
    assert "40.0 polls/s (every 25 ms); answers in 0.10 ms on average, 0.30 ms at most" in text
    assert "  select-first:                  yes      the VMC enabled always-idle" in text
    assert "  per-slot stock from DEX:       yes" in text
    empty = p.format_profile(p.to_json(p.Profile()))
    assert "VMC       not identified (no EXPANSION REQUEST ID seen)" in empty
    assert "MDB       not set up by the VMC yet" in empty


texts = st.text(st.characters(codec="ascii", exclude_characters=" "), max_size=12)
mdb_facts = st.builds(
    p.MdbFacts,
    vmc_level=st.none() | st.integers(0, 3),
    operating_level=st.none() | st.integers(1, 3),
    columns=st.integers(0, 40),
    rows=st.integers(0, 4),
    display_info=st.integers(0, 255),
    max_price=st.none() | st.integers(0, 2**32 - 1),
    min_price=st.none() | st.integers(0, 2**32 - 1),
    identity=st.none() | st.builds(p.VmcIdentity, texts, texts, texts, st.integers(0, 0xFFFF)),
    features=st.none() | st.integers(0, 63),
    cash_sales_seen=st.booleans(),
)
dex_facts = st.builds(
    p.DexFacts,
    configured=st.booleans(),
    protocol=st.none() | st.sampled_from(["ucs", "ddcmp"]),
    answered=st.booleans(),
    fields=st.lists(st.sampled_from(["PA1", "PA2", "CA15", "EA1", "EA2"]), unique=True).map(tuple),
    selections=st.integers(0, 999),
    priced=st.integers(0, 999),
    counted=st.integers(0, 999),
    tube_value=st.booleans(),
    machine_serial=st.none() | texts,
    machine_model=st.none() | texts,
    last_error=st.none() | texts,
)
timings = st.builds(
    p.BusTiming,
    polls_per_s=st.none() | st.floats(0, 1000, allow_nan=False),
    answers=st.integers(0, 10**9),
    answer_mean_ms=st.none() | st.floats(0, 100, allow_nan=False),
    answer_max_ms=st.none() | st.floats(0, 100, allow_nan=False),
)
profiles = st.builds(
    p.Profile, mdb_facts, timings, dex_facts, st.none() | st.floats(0, 2e9, allow_nan=False)
)


@given(profiles)
def test_the_journals_copy_reads_back_the_same(profile: p.Profile) -> None:
    text = json.dumps(p.to_json(profile))
    assert p.from_json(json.loads(text)) == profile
    assert p.changed_keys(profile, p.from_json(json.loads(text))) == []
    assert p.format_profile(json.loads(text))  # any profile can be shown


@given(mdb_facts)
def test_select_first_is_yes_exactly_when_a_level_3_vmc_enabled_always_idle(
    mdb: p.MdbFacts,
) -> None:
    said = {v.key: v.answer for v in p.verdicts(p.Profile(mdb))}
    assert list(said) == [
        "remote_vend",
        "select_first",
        "test_vends",
        "wide_prices",
        "display",
        "cash_sales",
        "answer_timing",
        "dex",
        "slot_stock",
        "slot_prices",
        "low_change",
        "machine_events",
    ]
    level3 = mdb.vmc_level is not None and (mdb.operating_level or 1) >= 3
    expected = level3 and mdb.feature(Feature.ALWAYS_IDLE)
    if mdb.vmc_level is None:
        assert said["select_first"] is p.Answer.UNKNOWN
    else:
        assert (said["select_first"] is p.Answer.YES) == expected
