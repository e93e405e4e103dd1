"""Wall-clock steps of a day while a transaction is open: the engine, fed by the steady clock,
keeps its deadlines in elapsed time and dates the steps of one transaction consistently; the
step is taken once nothing is open."""

from __future__ import annotations

import time
from pathlib import Path

from protocols.mdb import events as ev
from tests.unit.test_transaction import engine, lock, requested, states
from vmc.clock import OFFSET_ENV, SteadyClock, wall_clock
from vmc.cloud import messages as m
from vmc.transaction import Engine, TxnState

DAY_S = 86400.0
S = TxnState


class _Clocks:
    """A wall clock that can be stepped and a monotonic one that only moves forward."""

    def __init__(self) -> None:
        self.wall_at = 1_767_000_000.0
        self.mono_at = 50.0

    def wall(self) -> float:
        return self.wall_at

    def monotonic(self) -> float:
        return self.mono_at

    def elapse(self, seconds: float) -> None:
        self.wall_at += seconds
        self.mono_at += seconds


def _steady(eng: Engine) -> tuple[_Clocks, SteadyClock]:
    clocks = _Clocks()
    clock = SteadyClock(clocks.wall, clocks.monotonic)
    clock.holding = lambda: eng.txn is not None or eng.credit is not None
    return clocks, clock


def test_clock_forward_day_does_not_expire_an_open_lock() -> None:
    eng = engine()
    clocks, clock = _steady(eng)
    locked_at = clock()
    lock(eng, now=locked_at, timeout_s=30)
    clocks.wall_at += DAY_S  # the step, with the lock open
    clocks.elapse(10)
    assert eng.tick(clock()).transitions == []  # 10 s of 30: still locked
    fx = requested(eng, now=clock())
    assert states(fx) == [S.REQUESTED]
    assert fx.transitions[0].updated_at - locked_at == 10.0  # dated in the lock's timeline
    clocks.elapse(1)
    backend_now = locked_at + 11  # the backend's clock did not step
    paid = eng.on_command(m.Paid("c-paid", backend_now + 30, "t1", 150), clock())
    assert paid.reply is not None
    assert paid.reply.ok  # its expires is judged by the steady clock too
    eng.on_bus(ev.VendApprovedSent(7, 150), clock())
    clocks.elapse(1)
    fx = eng.on_bus(ev.VendSucceeded(7, 12, 150), clock())
    assert states(fx) == [S.VENDED]
    assert fx.transitions[0].updated_at - locked_at == 12.0
    assert eng.txn is None
    assert clock() - locked_at >= DAY_S  # nothing open: the step is taken now


def test_clock_backward_day_keeps_the_lock_deadline_in_elapsed_time() -> None:
    eng = engine()
    clocks, clock = _steady(eng)
    locked_at = clock()
    lock(eng, now=locked_at, timeout_s=30)
    clocks.wall_at -= DAY_S
    clocks.elapse(29)
    assert eng.tick(clock()).transitions == []
    clocks.elapse(1)
    fx = eng.tick(clock())
    assert states(fx) == [S.EXPIRED]
    ended = fx.transitions[0]
    assert ended.reason == "lock_timeout"
    assert ended.updated_at - ended.created_at == 30.0  # never negative, never a day
    assert clock() < locked_at  # nothing open: the wall clock as it is, a day back


def test_clock_without_steady_clock_a_forward_day_would_expire_the_lock() -> None:
    """What the steady clock prevents: the engine takes time as given."""
    eng = engine()
    lock(eng, now=1000.0, timeout_s=30)
    assert states(eng.tick(1000.0 + DAY_S)) == [S.EXPIRED]


def test_clock_offset_file_for_tests(tmp_path: Path) -> None:
    offset = tmp_path / "offset"
    offset.write_text("86400")
    wall = wall_clock({OFFSET_ENV: str(offset)})
    assert wall() - time.time() > DAY_S - 5
    offset.write_text("not a number")
    assert abs(wall() - time.time()) < 5
