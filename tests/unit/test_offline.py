"""Bounded offline approvals (sans-I/O): the decision, its bounds whatever the sequence, the
engine's offline sessions, the ``offline.allow`` command and the ``[offline]`` table."""

from __future__ import annotations

import itertools
from pathlib import Path

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.errors import ConfigError
from protocols.mdb import events as ev
from protocols.mdb.commands import PaymentType
from vmc.cloud import codec
from vmc.cloud import messages as m
from vmc.config import load_config
from vmc.credit import CreditKind, CreditState
from vmc.offline import (
    HOUR_S,
    Allowance,
    AllowList,
    Bounds,
    Denial,
    Limit,
    Spent,
    Usage,
    decide,
)
from vmc.services import bus_messages as bus
from vmc.transaction import SESSION_MARGIN_S, Engine, EngineConfig, Money, TxnState

BOUNDS = Bounds(enabled=True, max_total_value=1000, max_vends=5, max_list_age_h=24.0)
NOW = 1_000_000.0


def allow_list(*limits: Limit, issued_at: float = NOW, version: int = 1) -> AllowList:
    return AllowList(version, issued_at, issued_at, {x.ref: x for x in limits})


ALICE = Limit("alice", max_vends=2, max_value=400)
LIST = allow_list(ALICE, Limit("bob", 10, 10_000))


# --- the decision: within each bound approved, beyond each bound denied --------------------


def test_offline_within_every_bound_is_approved_for_what_is_left() -> None:
    assert decide("alice", LIST, Usage(), BOUNDS, NOW) == Allowance("alice", 400, 1)
    used = Usage().add("alice", Spent(1, 150))
    assert decide("alice", LIST, used, BOUNDS, NOW) == Allowance("alice", 250, 1)
    # the machine's total caps a reference's own limit
    busy = Usage().add("bob", Spent(3, 900))
    assert decide("bob", LIST, busy, BOUNDS, NOW) == Allowance("bob", 100, 1)


def test_offline_list_at_its_age_limit_still_approves() -> None:
    at_limit = NOW + BOUNDS.max_list_age_h * HOUR_S
    assert isinstance(decide("alice", LIST, Usage(), BOUNDS, at_limit), Allowance)


@pytest.mark.parametrize(
    ("ref", "usage", "denial"),
    [
        ("alice", Usage().add("alice", Spent(2, 100)), Denial.REF_VENDS),
        ("alice", Usage().add("alice", Spent(1, 400)), Denial.REF_VALUE),
        ("bob", Usage().add("alice", Spent(0, 0)).add("bob", Spent(5, 100)), Denial.TOTAL_VENDS),
        ("bob", Usage().add("bob", Spent(2, 1000)), Denial.TOTAL_VALUE),
        ("carol", Usage(), Denial.UNKNOWN_REF),
    ],
)
def test_offline_beyond_a_bound_is_denied(ref: str, usage: Usage, denial: Denial) -> None:
    assert decide(ref, LIST, usage, BOUNDS, NOW) is denial


def test_offline_disabled_or_without_a_list_denies() -> None:
    assert decide("alice", LIST, Usage(), Bounds(), NOW) is Denial.DISABLED
    assert decide("alice", None, Usage(), BOUNDS, NOW) is Denial.NO_LIST


def test_offline_list_too_old_or_a_clock_gone_back_denies() -> None:
    late = NOW + BOUNDS.max_list_age_h * HOUR_S + 1
    assert decide("alice", LIST, Usage(), BOUNDS, late) is Denial.LIST_TOO_OLD
    assert decide("alice", LIST, Usage(), BOUNDS, NOW - 1) is Denial.LIST_TOO_OLD
    # issued long before it arrived: the age counts from the issue
    stale = AllowList(1, NOW - 25 * HOUR_S, NOW, LIST.limits)
    assert decide("alice", stale, Usage(), BOUNDS, NOW) is Denial.LIST_TOO_OLD


def test_offline_list_survives_its_json() -> None:
    assert AllowList.from_json(LIST.to_json()) == LIST


# --- the bounds hold whatever the sequence ------------------------------------------------

REFS = ("a", "b", "c", "d")


@given(
    limits=st.lists(
        st.tuples(st.integers(1, 4), st.integers(1, 600)), min_size=len(REFS), max_size=len(REFS)
    ),
    total_value=st.integers(1, 1500),
    total_vends=st.integers(1, 8),
    steps=st.lists(
        st.tuples(
            st.sampled_from((*REFS, "stranger")),
            st.integers(0, 700),  # the price the customer picks
            st.sampled_from(("success", "failure", "unknown", "abandoned")),
            st.floats(0, 30 * HOUR_S),  # when it is presented, from the list's issue
        ),
        max_size=40,
    ),
)
def test_offline_usage_never_exceeds_any_bound(
    limits: list[tuple[int, int]],
    total_value: int,
    total_vends: int,
    steps: list[tuple[str, int, str, float]],
) -> None:
    bounds = Bounds(True, total_value, total_vends, 24.0)
    allow = allow_list(*(Limit(r, v, x) for r, (v, x) in zip(REFS, limits, strict=True)))
    usage = Usage()
    for ref, price, outcome, after in sorted(steps, key=lambda s: s[3]):
        decision = decide(ref, allow, usage, bounds, NOW + after)
        if isinstance(decision, Denial):
            continue
        assert after <= bounds.max_list_age_h * HOUR_S
        assert ref in allow.limits
        # the session's rule: a selection priced above the allowance is denied on the bus
        if price > decision.value or outcome in ("failure", "abandoned"):
            continue  # nothing dispensed: nothing used
        usage = usage.add(ref, Spent(1, price))
        assert usage.total.vends <= bounds.max_vends
        assert usage.total.value <= bounds.max_total_value
        for name, limit in allow.limits.items():
            assert usage.of(name).vends <= limit.max_vends
            assert usage.of(name).value <= limit.max_value


# --- the engine's offline session ---------------------------------------------------------


def engine() -> Engine:
    counter = itertools.count(1)
    eng = Engine(
        EngineConfig(Money(978, 2), approval_timeout=4.0, lock_timeout=30.0),
        lambda: f"t{next(counter)}",
    )
    eng.on_bus(ev.StateChanged(ev.State.DISABLED, ev.State.ENABLED), NOW)
    return eng


def test_offline_session_approves_one_vend_within_its_value_and_reports_it() -> None:
    eng = engine()
    fx = eng.present_offline("p1", Allowance("alice", 200, 7), 30.0, NOW)
    assert fx.reply is not None
    assert fx.reply.ok
    assert fx.reply.result["mode"] == "offline"
    assert fx.bus == [bus.BeginSession(200, int(PaymentType.NORMAL), 30.0 + SESSION_MARGIN_S)]
    assert fx.durable
    (session,) = fx.credits
    assert (session.kind, session.value, session.list_version) == (CreditKind.OFFLINE, 200, 7)
    over = eng.on_bus(ev.VendRequested(1, 3, 250), NOW + 1)
    assert over.bus == [bus.DenyVend(1)]  # above the allowance: denied, the session stays
    fx = eng.on_bus(ev.VendRequested(2, 4, 150), NOW + 2)
    assert fx.bus == [bus.ApproveVend(2, 150)]
    assert fx.durable  # the price is reserved before the bus hears of the approval
    assert fx.credits[-1].used == 150
    eng.on_bus(ev.VendApprovedSent(2, 150), NOW + 2)
    done = eng.on_bus(ev.VendSucceeded(2, 4, 150), NOW + 3)
    (vend,) = [e for e in done.events if isinstance(e, m.TxnVend)]
    assert (vend.ref, vend.amount, vend.offline, vend.list_version) == ("alice", 150, True, 7)
    assert (vend.voucher_id, vend.credit_id, vend.vend_type) == (None, None, m.VendType.PAID)
    assert len(done.events) == 1  # no outcome event of its own
    assert done.credits[-1].state is CreditState.USED
    assert eng.credit is None


def test_offline_session_failed_vend_gives_the_value_back() -> None:
    eng = engine()
    eng.present_offline("p1", Allowance("alice", 200, 1), 30.0, NOW)
    eng.on_bus(ev.VendRequested(1, 3, 150), NOW + 1)
    eng.on_bus(ev.VendApprovedSent(1, 150), NOW + 1)
    fx = eng.on_bus(ev.VendFailed(1, 3, 150), NOW + 2)
    assert fx.credits[-1].used == 0
    assert not fx.credits[-1].txn_ids  # not a vend that counts
    assert eng.credit is not None  # open for another selection


def test_offline_session_cut_by_a_crash_counts_its_vend_as_used() -> None:
    eng = engine()
    eng.present_offline("p1", Allowance("alice", 200, 1), 30.0, NOW)
    fx = eng.on_bus(ev.VendRequested(1, 3, 150), NOW + 1)
    txn, session = fx.transitions[-1], fx.credits[-1]
    after = engine().recover(txn, NOW + 5, session)
    (vend,) = after.events
    assert isinstance(vend, m.TxnVend)
    assert (vend.result, vend.detail, vend.offline) == ("unknown", "restart_during_vend", True)
    assert (after.credits[-1].used, after.credits[-1].txn_ids) == (150, (txn.txn_id,))


def test_offline_presentation_is_refused_while_busy() -> None:
    eng = engine()
    eng.present_offline("p1", Allowance("alice", 200, 1), 30.0, NOW)
    again = eng.present_offline("p2", Allowance("bob", 200, 1), 30.0, NOW)
    assert again.reply is not None
    assert again.reply.code is m.ErrorCode.BUSY
    assert not again.credits


def test_online_presentation_is_a_lock_with_the_ref() -> None:
    eng = engine()
    fx = eng.present_online("p1", "alice", NOW)
    assert fx.reply is not None
    assert fx.reply.result["mode"] == "online"
    (txn,) = fx.transitions
    assert (txn.state, txn.ref, txn.offline_list) == (TxnState.LOCKED, "alice", None)
    req = eng.on_bus(ev.VendRequested(1, 3, 150), NOW + 1)
    (request,) = req.events
    assert isinstance(request, m.TxnRequest)
    assert request.ref == "alice"
    assert not req.bus  # the backend decides


# --- offline.allow and [offline] ----------------------------------------------------------


def command(**fields: object) -> bytes:
    return cbor2.dumps({"id": "c1", "op": "offline.allow", "expires": NOW, **fields})


def test_offline_allow_decodes() -> None:
    refs = [{"ref": "alice", "max_vends": 2, "max_value": 400}]
    cmd = codec.decode_command(command(version=3, issued_at=NOW, refs=refs))
    assert cmd == m.OfflineAllow("c1", NOW, 3, NOW, (ALICE,))
    empty = codec.decode_command(command(version=4, issued_at=NOW, refs=[]))
    assert isinstance(empty, m.OfflineAllow)
    assert empty.limits == ()


@pytest.mark.parametrize(
    ("fields", "code", "starts"),
    [
        ({"issued_at": NOW, "refs": []}, "missing_field", "version"),
        ({"version": 0, "issued_at": NOW, "refs": []}, "bad_field", "version"),
        ({"version": 1, "refs": []}, "missing_field", "issued_at"),
        ({"version": 1, "issued_at": NOW}, "missing_field", "refs"),
        ({"version": 1, "issued_at": NOW, "refs": [{"ref": "a"}]}, "missing_field", "refs[0]"),
        (
            {"version": 1, "issued_at": NOW, "refs": [{"ref": "", "max_vends": 1, "max_value": 1}]},
            "bad_field",
            "refs[0].ref",
        ),
        (
            {
                "version": 1,
                "issued_at": NOW,
                "refs": [{"ref": "a", "max_vends": 1, "max_value": 1}] * 2,
            },
            "bad_field",
            "refs[1].ref",
        ),
        (
            {
                "version": 1,
                "issued_at": NOW,
                "refs": [{"ref": "a", "max_vends": 0, "max_value": 1}],
            },
            "bad_field",
            "refs[0].max_vends",
        ),
        (
            {
                "version": 1,
                "issued_at": NOW,
                "refs": [{"ref": "a", "max_vends": 1, "max_value": True}],
            },
            "bad_field",
            "refs[0].max_value",
        ),
    ],
)
def test_offline_allow_refusals_name_the_field(
    fields: dict[str, object], code: str, starts: str
) -> None:
    with pytest.raises(codec.CommandError) as caught:
        codec.decode_command(command(**fields))
    assert caught.value.code.value == code
    assert caught.value.message.startswith(starts)


def test_offline_config_is_off_by_default_and_checked(tmp_path: Path) -> None:
    assert load_config(None).offline == Bounds()
    path = tmp_path / "vmc.toml"
    path.write_text(
        "[offline]\nenabled = true\nmax_total_value = 5000\nmax_vends = 20\nmax_list_age_h = 12\n"
    )
    assert load_config(path).offline == Bounds(True, 5000, 20, 12)
    for text, wanted in (
        ("enabled = true\nmax_vends = 3", "offline.max_total_value: must be set"),
        ("enabled = true\nmax_total_value = 3", "offline.max_vends: must be set"),
        ("max_vends = -1", "offline.max_vends: -1 is not allowed"),
        ("max_list_age_h = 0", "offline.max_list_age_h: 0 must be positive"),
        ("enabled = 1", "offline.enabled: 1 is not allowed"),
        ("limit = 3", "offline.limit: unknown key"),
    ):
        path.write_text(f"[offline]\n{text}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert str(caught.value).startswith(wanted), caught.value
        assert "\n" not in str(caught.value)
