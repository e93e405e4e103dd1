"""The control socket's line protocol: requests parsed strictly, answers read, lines framed."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmc.control.protocol import (
    MAX_REQUEST,
    Args,
    ControlError,
    LineBuffer,
    Request,
    error_line,
    event_line,
    parse_answer,
    parse_request,
    request_line,
    result_line,
)

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
IDS = st.none() | st.integers(-(2**63), 2**63) | st.text(min_size=1, max_size=128)
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,10}(\.[a-z][a-z0-9_]{0,10}){0,2}", fullmatch=True)


@pytest.mark.parametrize(
    ("line", "wanted"),
    [
        (b'{"id": 1, "cmd": "status"}\n', Request(1, "status", {})),
        (
            b'{"id": "a", "cmd": "txn.show", "args": {"txn_id": "x"}}',
            Request("a", "txn.show", {"txn_id": "x"}),
        ),
        (b'{"cmd": "events.follow", "args": null}\n', Request(None, "events.follow", {})),
        ('{"id": "\u00e9", "cmd": "status"}\n'.encode(), Request("\u00e9", "status", {})),
    ],
)  # fmt: skip
def test_requests_that_parse(line: bytes, wanted: Request) -> None:
    assert parse_request(line) == wanted


@pytest.mark.parametrize(
    ("line", "code", "fragment"),
    [
        (b"hello\n", "bad_request", "not a JSON line"),
        (b"\xff\xfe{}\n", "bad_request", "not a JSON line"),
        (b"[1, 2]\n", "bad_request", "a JSON object"),
        (b'{"id": 1, "cmd": "status", "args": {"n": NaN}}', "bad_request", "not a JSON line"),
        (b'{"id": true, "cmd": "status"}', "bad_request", "id must be"),
        (b'{"id": 1.5, "cmd": "status"}', "bad_request", "id must be"),
        (b'{"id": "", "cmd": "status"}', "bad_request", "id must be"),
        (b'{"id": [1], "cmd": "status"}', "bad_request", "id must be"),
        (b'{"id": 1}', "bad_request", "cmd must be"),
        (b'{"id": 1, "cmd": "Status"}', "bad_request", "cmd must be"),
        (b'{"id": 1, "cmd": "txn..list"}', "bad_request", "cmd must be"),
        (b'{"id": 1, "cmd": "status", "args": [1]}', "bad_request", "args must be"),
        (b"[" * 100_000, "too_large", "at most"),
        (b"[" * 50_000 + b"]" * 10_000, "bad_request", "not a JSON line"),
    ],
)
def test_requests_that_are_refused(line: bytes, code: str, fragment: str) -> None:
    with pytest.raises(ControlError) as caught:
        parse_request(line)
    assert caught.value.code == code
    assert fragment in caught.value.message


def test_a_refused_request_keeps_its_id_when_it_could_be_read() -> None:
    with pytest.raises(ControlError) as caught:
        parse_request(b'{"id": 7, "cmd": 3}')
    assert caught.value.request_id == 7


def _parsed_or_code(line: bytes) -> Request | str:
    """The request, or the refusal's code: anything else raised fails the test."""
    try:
        return parse_request(line)
    except ControlError as exc:
        return exc.code


@given(st.binary(max_size=2000))
def test_any_bytes_are_a_request_or_a_refusal(line: bytes) -> None:
    outcome = _parsed_or_code(line)
    assert isinstance(outcome, Request) or outcome == "bad_request"


@given(st.text(max_size=300) | st.builds(json.dumps, JSON_VALUES))
def test_any_text_is_a_request_or_a_refusal(text: str) -> None:
    outcome = _parsed_or_code(text.encode("utf-8", "surrogatepass"))
    assert isinstance(outcome, Request) or outcome == "bad_request"


@given(IDS, NAMES, st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5))
def test_a_request_line_parses_back(request_id: Any, cmd: str, args: dict[str, Any]) -> None:
    line = request_line(request_id, cmd, args)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1  # one line, whatever the strings hold
    assert parse_request(line) == Request(request_id, cmd, args)


@given(IDS, JSON_VALUES)
def test_answers_parse_back(request_id: Any, value: Any) -> None:
    result = parse_answer(result_line(request_id, value))
    assert (result.id, result.result, result.final) == (request_id, value, True)
    event = parse_answer(event_line(request_id, {"value": value}))
    assert (event.event, event.final) == ({"value": value}, False)
    error = parse_answer(error_line(request_id, "busy", "try again")).error
    assert error is not None
    assert (error.code, error.message, error.request_id) == ("busy", "try again", request_id)


@pytest.mark.parametrize(
    "line", [b"", b"nope", b"[]", b'{"id": 1}', b'{"id": 1, "ok": false, "error": "x"}']
)
def test_lines_that_are_no_answer(line: bytes) -> None:
    with pytest.raises(ControlError, match="vmcd sent a line"):
        parse_answer(line)


@given(
    st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=10),
    st.lists(st.integers(1, 30), min_size=1, max_size=20),
)
def test_line_buffer_gives_back_the_lines_however_they_are_cut(
    lines: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    buffer = LineBuffer(64)
    got: list[bytes] = []
    position, turn = 0, 0
    while position < len(stream):
        size = cuts[turn % len(cuts)]
        got.extend(buffer.feed(stream[position : position + size]))
        position, turn = position + size, turn + 1
    assert got == lines
    assert buffer.pending == 0


def test_line_buffer_refuses_a_line_over_its_limit_without_holding_it() -> None:
    buffer = LineBuffer(16)
    assert buffer.feed(b"0123456789") == []
    with pytest.raises(ControlError) as caught:
        buffer.feed(b"0123456789")
    assert caught.value.code == "too_large"
    with pytest.raises(ControlError):
        LineBuffer(16).feed(b"x" * 20 + b"\nok\n")


def test_a_request_of_exactly_the_limit_is_taken() -> None:
    head = b'{"cmd": "status", "args": {"pad": "'
    tail = b'"}}\n'
    line = head + b"x" * (MAX_REQUEST - len(head) - len(tail)) + tail
    assert len(line) == MAX_REQUEST
    assert parse_request(line).cmd == "status"
    with pytest.raises(ControlError, match="at most"):
        parse_request(line[:-4] + b'x"}}\n')


def test_args_are_read_by_type_and_named_when_wrong() -> None:
    args = Args({"limit": 5, "from": "2026-01-02", "follow": True, "command": {"id": "x"}})
    assert args.integer("limit", default=20, low=1, high=10) == 5
    assert args.integer("other", default=20, low=1, high=10) == 20
    assert args.text("from") == "2026-01-02"
    assert args.flag("follow") is True
    assert args.mapping("command") == {"id": "x"}
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: Args({"limit": 11}).integer("limit", default=1, low=1, high=10), "limit must"),
        (lambda: Args({"limit": True}).integer("limit", default=1, low=1, high=10), "limit must"),
        (lambda: Args({}).text("txn_id", required=True), "txn_id is required"),
        (lambda: Args({"txn_id": ""}).text("txn_id"), "txn_id must"),
        (lambda: Args({"follow": 1}).flag("follow"), "follow must"),
        (lambda: Args({"command": [1]}).mapping("command"), "command must"),
    ]
    for call, fragment in calls:
        with pytest.raises(ControlError, match=fragment) as caught:
            call()
        assert caught.value.code == "bad_args"
    json.dumps(args.values)  # what a handler gets is JSON as it came
