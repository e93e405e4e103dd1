"""The data request book and the busy reasons of ``status.check``: no I/O, made-up times."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.mdb.events import State
from vmc.cloud import messages as m
from vmc.data_request import (
    MAX_PENDING,
    PROGRESS_EVERY_S,
    Machine,
    Request,
    RequestBook,
    RequestError,
    busy_reasons,
)

BOOK = RequestBook(dex=True)


def test_data_request_config_alone_is_answered_at_once() -> None:
    accepted = BOOK.request("r1", report=False, config=True, local=False, now=5.0)
    assert (accepted.answered, accepted.read_wanted, accepted.joined) == (True, False, False)
    assert accepted.request == Request("r1", False, True, False, 5.0)
    assert accepted.book == BOOK  # nothing pending


def test_data_request_report_without_dex_port_is_refused() -> None:
    with pytest.raises(RequestError) as refused:
        RequestBook(dex=False).request("r1", report=True, config=True, local=False, now=0.0)
    assert refused.value.code is m.ErrorCode.NO_DEX_PORT
    answered = RequestBook(dex=False).request("r1", report=False, config=True, local=False, now=0)
    assert answered.answered


def test_data_request_same_id_is_merged_and_a_new_id_joins_the_running_read() -> None:
    first = BOOK.request("r1", report=True, config=False, local=False, now=1.0)
    assert (first.read_wanted, first.joined, first.request.read_id) == (True, False, None)
    again = first.book.request("r1", report=False, config=True, local=False, now=1.5)
    assert (again.read_wanted, again.joined, again.answered) == (False, True, False)
    assert (again.request.report, again.request.config, again.request.created) == (True, True, 1.0)
    book = again.book.read_started("read-A", 2.0)
    assert [r.read_id for r in book.pending] == ["read-A"]
    joining = book.request("r2", report=True, config=False, local=True, now=3.0)
    assert (joining.read_wanted, joining.joined, joining.request.read_id) == (
        False,
        False,
        "read-A",
    )
    book, done = joining.book.read_finished("read-A")
    assert [(r.request_id, r.report, r.config) for r in done] == [
        ("r1", True, True),
        ("r2", True, False),
    ]
    assert book == BOOK
    fresh = book.request("r1", report=True, config=False, local=False, now=9.0)
    assert (fresh.joined, fresh.read_wanted) == (False, True)  # done: the id is new again


def test_data_request_a_read_answers_only_its_own_requests() -> None:
    book = BOOK.read_started("read-A", 0.0)
    book = book.request("r1", report=True, config=False, local=False, now=0.1).book
    book, done = book.read_finished("read-B")
    assert done == ()
    assert [r.request_id for r in book.pending] == ["r1"]
    assert book.read is not None


def test_data_request_progress_at_most_once_a_second_and_only_when_someone_waits() -> None:
    book = BOOK.read_started("read-A", 0.0)
    book, due = book.block("read-A", 16, 0.1)
    assert not due  # a scheduled read nobody asked about
    book = book.request("r1", report=True, config=False, local=False, now=0.2).book
    told = []
    for n, now in enumerate((0.3, 0.5, 1.2, 1.31, 2.0, 2.4, 9.0), start=2):
        book, due = book.block("read-A", 16 * n, now)
        if due:
            told.append(now)
    assert told == [0.3, 1.31, 2.4, 9.0]
    assert book.read is not None
    assert (book.read.received, book.read.blocks) == (16 * 8, 8)
    _, due = book.block("read-B", 1, 20.0)
    assert not due  # another read's block (none runs under that id)


def test_data_request_too_many_waiting_ids_are_refused_busy() -> None:
    book = BOOK
    for n in range(MAX_PENDING):
        book = book.request(f"r{n}", report=True, config=False, local=False, now=n).book
    with pytest.raises(RequestError) as refused:
        book.request("one-more", report=True, config=False, local=False, now=99.0)
    assert refused.value.code is m.ErrorCode.BUSY
    merged = book.request("r3", report=False, config=True, local=False, now=99.0)
    assert merged.joined  # a pending id is always merged
    assert book.request("cfg", report=False, config=True, local=False, now=99.0).answered


def test_data_request_restart_settles_every_pending_request() -> None:
    book = BOOK.request("r1", report=True, config=True, local=False, now=0.0).book
    book = book.read_started("read-A", 1.0)
    book = book.request("r2", report=True, config=False, local=True, now=2.0).book
    settled_book, settled = book.settle_all()
    assert [r.request_id for r in settled] == ["r1", "r2"]
    assert settled_book == BOOK


# --- a model of the daemon driving the book ------------------------------------------------

IDS = st.sampled_from(["a", "b", "c", "d"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("request"), IDS, st.booleans(), st.booleans()),
        st.tuples(st.just("start")),
        st.tuples(st.just("block"), st.floats(0.0, 2.0)),
        st.tuples(st.just("finish")),
    ),
    max_size=60,
)


@given(STEPS)
def test_data_request_each_request_gets_exactly_one_completion(
    steps: list[tuple[object, ...]],
) -> None:
    """Whatever the order (reads start when asked for or on their own schedule, one at a
    time): every request completed once (at once for config alone, else by the read it waited
    for), a read asked for only when none runs, and progress never closer than a second."""
    book = BOOK
    now = 0.0
    reads = 0
    opened: Counter[str] = Counter()  # requests (not merges) per id
    completed: Counter[str] = Counter()
    told: list[float] = []  # progress of the read running
    for step in steps:
        now += 0.25
        match step:
            case ("request", str(rid), bool(report), bool(config)):
                if not (report or config):
                    continue
                accepted = book.request(rid, report=report, config=config, local=False, now=now)
                if not accepted.joined:
                    opened[rid] += 1
                if accepted.answered:
                    completed[rid] += 1
                assert not (accepted.read_wanted and book.read is not None)
                book = accepted.book
            case ("start",):
                if book.read is None:  # the reporter runs one read at a time
                    book = book.read_started(f"read-{reads}", now)
                    reads += 1
                    told = []
            case ("block", float(extra)):
                if book.read is not None:
                    now += extra
                    book, due = book.block(book.read.read_id, book.read.received + 16, now)
                    if due:
                        told.append(now)
                        assert all(b - a >= PROGRESS_EVERY_S for a, b in itertools.pairwise(told))
            case ("finish",):
                if book.read is not None:
                    book, done = book.read_finished(book.read.read_id)
                    completed.update(r.request_id for r in done)
    book, settled = book.settle_all()
    completed.update(r.request_id for r in settled)
    assert completed == opened


# --- status.check ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("machine", "reasons"),
    [
        (Machine(True, State.ENABLED), []),
        (Machine(False, State.ENABLED), [{"reason": "mdb_link_down"}]),
        (Machine(True, State.DISABLED), [{"reason": "reader_disabled", "reader": "disabled"}]),
        (Machine(True, State.INACTIVE), [{"reason": "reader_disabled", "reader": "inactive"}]),
        (Machine(True, State.SESSION_IDLE), [{"reason": "session", "reader": "session_idle"}]),
        (Machine(True, State.VEND), [{"reason": "vend", "reader": "vend"}]),
        (Machine(True, State.REVALUE), [{"reason": "session", "reader": "revalue"}]),
        (
            Machine(True, State.VEND, "t1", "dispensing"),
            [
                {"reason": "vend", "reader": "vend"},
                {"reason": "txn", "txn_id": "t1", "state": "dispensing"},
            ],
        ),
        (
            Machine(False, State.SESSION_IDLE, "t1", "locked"),  # a stale reader state: unsaid
            [{"reason": "mdb_link_down"}, {"reason": "txn", "txn_id": "t1", "state": "locked"}],
        ),
    ],
)
def test_check_status_reasons_from_the_machine(
    machine: Machine, reasons: list[dict[str, object]]
) -> None:
    assert busy_reasons(machine, BOOK) == reasons


def test_check_status_reasons_dex_read() -> None:
    idle = Machine(True, State.ENABLED)
    asked = BOOK.request("r1", report=True, config=False, local=False, now=0.0).book
    waiting = {"reason": "dex_read", "read_id": None, "received": 0, "blocks": 0}
    assert busy_reasons(idle, asked) == [waiting]
    reading, _ = asked.read_started("read-A", 1.0).block("read-A", 245, 1.5)
    assert busy_reasons(idle, reading) == [
        {"reason": "dex_read", "read_id": "read-A", "received": 245, "blocks": 1},
    ]
    scheduled = BOOK.read_started("read-B", 0.0)  # nobody asked: busy all the same
    assert busy_reasons(idle, scheduled)[0]["read_id"] == "read-B"
