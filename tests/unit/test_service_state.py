"""Operating state, service flags and door times: the rules of vmc.service_state."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.evadts import AuditDelta, delta, make_audit, parse, tube_contents
from protocols.evadts.records import Event, EventCounter
from protocols.mdb.events import State
from tests.corpus import DEX
from vmc.service_state import (
    IN_SERVICE,
    OperatingRule,
    OperatingState,
    TubeContents,
    door_opened_at,
    event_time,
    low_change,
    no_recent_sales,
)

OPERATING = OperatingState.OPERATING
OUT = OperatingState.OUT_OF_SERVICE
NO_LINK = OperatingState.NO_CONNECTION
UNKNOWN = OperatingState.UNKNOWN
BERLIN = ZoneInfo("Europe/Berlin")


def _rule() -> OperatingRule:
    return OperatingRule(out_of_service_after=60.0, started=100.0, link_timeout=5.0)


def test_operating_state_unknown_until_the_link_is_seen_or_its_timeout_passed() -> None:
    rule = _rule()
    assert rule.observe(100.0, link_up=False, reader=State.INACTIVE) is UNKNOWN
    assert rule.observe(104.9, link_up=False, reader=State.INACTIVE) is UNKNOWN
    assert rule.observe(105.0, link_up=False, reader=State.INACTIVE) is NO_LINK
    seen = _rule()
    assert seen.observe(101.0, link_up=True, reader=State.ENABLED) is OPERATING
    assert seen.observe(102.0, link_up=False, reader=State.ENABLED) is NO_LINK


def test_operating_state_out_of_service_after_the_reader_stays_disabled() -> None:
    rule = _rule()
    assert rule.observe(110.0, link_up=True, reader=State.INACTIVE) is OPERATING
    assert rule.observe(150.0, link_up=True, reader=State.DISABLED) is OPERATING
    assert rule.observe(170.0, link_up=True, reader=State.DISABLED) is OUT
    assert rule.observe(171.0, link_up=True, reader=State.VEND) is OPERATING
    assert rule.observe(172.0, link_up=True, reader=State.DISABLED) is OPERATING
    # A link that drops starts the count again.
    assert rule.observe(200.0, link_up=False, reader=State.DISABLED) is NO_LINK
    assert rule.observe(201.0, link_up=True, reader=State.DISABLED) is OPERATING
    assert rule.observe(260.9, link_up=True, reader=State.DISABLED) is OPERATING
    assert rule.observe(261.0, link_up=True, reader=State.DISABLED) is OUT


looks = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=30.0), st.booleans(), st.sampled_from(list(State))
    ),
    max_size=40,
)


@given(looks)
def test_operating_state_follows_its_written_rule_for_any_sequence_of_looks(
    steps: list[tuple[float, bool, State]],
) -> None:
    """Against the contract's words, judged on the whole history at each look."""
    rule = OperatingRule(out_of_service_after=20.0, started=0.0, link_timeout=5.0)
    now = 0.0
    history: list[tuple[float, bool, State]] = []
    for step, link_up, reader in steps:
        now += step
        history.append((now, link_up, reader))
        got = rule.observe(now, link_up=link_up, reader=reader)
        if not link_up:
            seen = any(up for _, up, _ in history)
            assert got is (NO_LINK if seen or now >= 5.0 else UNKNOWN)
            continue
        if reader in IN_SERVICE:
            assert got is OPERATING
            continue
        # The run of looks, up to now, with the link up and the reader out of service.
        start = now
        for at, up, state in reversed(history):
            if not up or state in IN_SERVICE:
                break
            start = at
        assert got is (OUT if now - start >= 20.0 else OPERATING)


def test_low_change_compares_in_the_contracts_minor_units() -> None:
    assert low_change(TubeContents(999, 2), 1000, 2) is True
    assert low_change(TubeContents(1000, 2), 1000, 2) is False
    assert low_change(TubeContents(9, 0), 1000, 2) is True  # 9 units < 10.00
    assert low_change(TubeContents(10, 0), 1000, 2) is False
    assert low_change(None, 1000, 2) is None  # the audit had no tubes
    assert low_change(TubeContents(5, 2), None, 2) is None  # no threshold configured


@given(st.integers(0, 10**9), st.integers(0, 6), st.integers(1, 10**9), st.integers(0, 6))
def test_low_change_is_exact_whatever_the_decimals(
    value: int, audit_decimals: int, below: int, decimals: int
) -> None:
    expected = Fraction(value, 10**audit_decimals) < Fraction(below, 10**decimals)
    assert low_change(TubeContents(value, audit_decimals), below, decimals) is expected


def test_no_recent_sales_counts_from_the_first_start_until_a_sale() -> None:
    hour = 3600.0
    assert no_recent_sales(None, 1000.0, 24 * hour, 1000.0 + 23 * hour) is False
    assert no_recent_sales(None, 1000.0, 24 * hour, 1000.0 + 24 * hour) is True
    sold = 1000.0 + 30 * hour
    assert no_recent_sales(sold, 1000.0, 24 * hour, sold + 1) is False
    assert no_recent_sales(sold, 1000.0, 24 * hour, sold + 24 * hour) is True
    # A sale from before the first start (a journal of an older version) counts as it is.
    assert no_recent_sales(1000.0 - 30 * hour, 1000.0, 24 * hour, 1000.0 + hour) is True


def test_event_time_reads_both_date_and_time_forms_in_the_machine_zone() -> None:
    summer = dt.datetime(2024, 6, 1, 8, 15, tzinfo=BERLIN).timestamp()
    assert event_time(Event("EGS", "240601", "0815"), BERLIN) == summer
    assert event_time(Event("EGS", "20240601", "081500"), BERLIN) == summer
    assert event_time(Event("EGS", "20240601", "081507"), BERLIN) == summer + 7
    for date, clock in [(None, "0815"), ("240601", None), ("241301", "0815"), ("2406", "0815")]:
        assert event_time(Event("EGS", date, clock), BERLIN) is None
    assert event_time(Event("EGS", "240601", "2561"), BERLIN) is None


def _door_change(events: list[Event], openings: int) -> AuditDelta:
    before = make_audit(serial="S1", event_counters=[EventCounter("EGS", 0, 5)])
    after = make_audit(
        serial="S1", events=events, event_counters=[EventCounter("EGS", 0, 5 + openings)]
    )
    return delta(before, after)


def test_door_time_is_the_latest_new_door_entry_never_after_the_read() -> None:
    read_at = dt.datetime(2024, 6, 2, 12, 0, tzinfo=BERLIN).timestamp()
    first = Event("EGS", "240601", "0815")
    later = Event("EGS", "240602", "0930")
    other = Event("EJJ", "240602", "1100")
    change = _door_change([first, later, other], 2)
    expected = dt.datetime(2024, 6, 2, 9, 30, tzinfo=BERLIN).timestamp()
    assert door_opened_at(change, read_at, BERLIN) == expected
    ahead = _door_change([Event("EGS", "240603", "0800")], 1)
    assert door_opened_at(ahead, read_at, BERLIN) == read_at
    unreadable = _door_change([Event("EGS", "??", "0800")], 1)
    assert door_opened_at(unreadable, read_at, BERLIN) == read_at


def test_door_time_is_the_read_for_a_grown_counter_and_none_without_a_door_event() -> None:
    assert door_opened_at(_door_change([], 3), 5000.0, BERLIN) == 5000.0
    quiet = _door_change([Event("EJJ", "240602", "1100")], 0)
    assert door_opened_at(quiet, 5000.0, BERLIN) is None


# CA1501 of the corpus audits that have a CA15, as the files say it. Where the file also has
# CA17 (coin value and count per tube), their products add up to it: it is the tubes' total.
CORPUS_TUBES = {
    "fage_eagle2_no_st_no_g85.dex": 5030,
    "necta_concerto_bluered_20191206.dex": 0,
    "necta_pc5461c_bluered_20191203_1145.dex": 0,
    "necta_pc5461c_bluered_20191203_1220.dex": 0,
    "rheavendors_luce_x2.dex": 160 * 5 + 136 * 10 + 52 * 20 + 53 * 50,  # 5850
    "wittern_gvc1_slot_preamble_truncated.dex": 49 * 5 + 93 * 10 + 161 * 25,  # TUBE1 of two
}


@pytest.mark.parametrize("path", DEX.params())
def test_corpus_tube_contents_are_the_first_ca1501(path: Path) -> None:
    audit = parse(path.read_bytes())
    assert tube_contents(audit.cash) == CORPUS_TUBES.get(path.name)
