"""The control socket's protocol: one JSON object per line, each way (sans-I/O).

A request is ``{"id": ID, "cmd": NAME, "args": {...}}``: ``id`` a string (1-128 characters),
an integer or null, echoed in everything sent back for it; ``cmd`` a registered command name;
``args`` an object, optional. The line, newline included, is at most :data:`MAX_REQUEST`
bytes of UTF-8.

The answer is one final line, ``{"id": ID, "ok": true, "result": ...}`` or
``{"id": ID, "ok": false, "error": {"code": CODE, "message": TEXT}}``; a streaming command
sends ``{"id": ID, "event": {...}}`` lines before it. Requests on one connection are answered
in order, one at a time. The codes of :class:`ErrorCode` are the socket's own; a command may
answer with codes of its own (documented with it in docs/cli.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

from protocols.errors import VmcError

MAX_REQUEST = 64 * 1024
"""Bytes in one request line, its newline included."""
MAX_ID = 128
COMMAND_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
MAX_COMMAND_NAME = 64

RequestId: TypeAlias = str | int | None
Json: TypeAlias = Any
"""A value :func:`json.dumps` takes: None, bool, int, float, str, list, dict of them."""


class ErrorCode(StrEnum):
    """The socket's own error codes; stable strings."""

    BAD_REQUEST = "bad_request"
    """Not a JSON object on one line, or a field of the wrong type: the connection closes."""
    TOO_LARGE = "too_large"
    """A request line over :data:`MAX_REQUEST` bytes: the connection closes."""
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGS = "bad_args"
    TIMEOUT = "timeout"
    """The command ran out of its time, or no request came in time (then the connection closes)."""
    BUSY = "busy"
    """Every client slot serves a request: try again."""
    INTERNAL = "internal"
    """A bug in the daemon's command; it is logged, the daemon serves on."""


class ControlError(VmcError):
    """A request answered with an error: a code, one line of message."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    cmd: str
    args: Mapping[str, Json]


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _loads(line: bytes) -> Json:
    """Strict JSON: UTF-8, no NaN or Infinity; any failure (deep nesting too) is ValueError."""
    try:
        return json.loads(line.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_request(line: bytes) -> Request:
    """One request line (its newline optional); :class:`ControlError` when it is not one."""
    if len(line) > MAX_REQUEST:
        raise ControlError(ErrorCode.TOO_LARGE, f"a request is at most {MAX_REQUEST} bytes")
    try:
        obj = _loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(ErrorCode.BAD_REQUEST, f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise ControlError(ErrorCode.BAD_REQUEST, "a request is a JSON object")
    raw_id = obj.get("id")
    request_id = raw_id if _is_id(raw_id) else None
    if not _is_id(raw_id):
        raise ControlError(
            ErrorCode.BAD_REQUEST,
            f"id must be a string of 1..{MAX_ID} characters, an integer or null",
        )
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or len(cmd) > MAX_COMMAND_NAME or not COMMAND_NAME.fullmatch(cmd):
        raise ControlError(
            ErrorCode.BAD_REQUEST, 'cmd must be a command name such as "status"', request_id
        )
    args = obj.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ControlError(ErrorCode.BAD_REQUEST, "args must be a JSON object", request_id)
    return Request(request_id, cmd, args)


def _is_id(value: object) -> bool:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return True
    return isinstance(value, str) and 0 < len(value) <= MAX_ID


def encode(message: Mapping[str, Json]) -> bytes:
    """One line: compact JSON and a newline (a newline inside strings is escaped by JSON)."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8") + b"\n"


def request_line(request_id: RequestId, cmd: str, args: Mapping[str, Json]) -> bytes:
    return encode({"id": request_id, "cmd": cmd, "args": args})


def result_line(request_id: RequestId, result: Json) -> bytes:
    return encode({"id": request_id, "ok": True, "result": result})


def error_line(request_id: RequestId, code: str, message: str) -> bytes:
    return encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


def event_line(request_id: RequestId, event: Mapping[str, Json]) -> bytes:
    return encode({"id": request_id, "event": event})


@dataclass(frozen=True, slots=True)
class Answer:
    """One line the daemon sent: an ``event`` of a stream, or the final ``result`` / error."""

    id: RequestId
    event: Mapping[str, Json] | None = None
    result: Json = None
    error: ControlError | None = None

    @property
    def final(self) -> bool:
        return self.event is None


def parse_answer(line: bytes) -> Answer:
    """A line from the daemon; :class:`ControlError` (``bad_request``) when it is not one."""
    try:
        obj = _loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ControlError(
            ErrorCode.BAD_REQUEST, f"vmcd sent a line that is not JSON: {exc}"
        ) from None
    if not isinstance(obj, dict) or not _is_id(obj.get("id")):
        raise ControlError(ErrorCode.BAD_REQUEST, "vmcd sent a line that is not an answer")
    answer_id = obj.get("id")
    event = obj.get("event")
    if isinstance(event, dict):
        return Answer(answer_id, event=event)
    if obj.get("ok") is True:
        return Answer(answer_id, result=obj.get("result"))
    error = obj.get("error")
    if obj.get("ok") is False and isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        if isinstance(code, str) and isinstance(message, str):
            return Answer(answer_id, error=ControlError(code, message, answer_id))
    raise ControlError(ErrorCode.BAD_REQUEST, "vmcd sent a line that is not an answer")


class LineBuffer:
    """Bytes in, complete lines out (without their newline); a line longer than ``limit``
    raises :class:`ControlError` (``too_large``) instead of growing the buffer without end."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._pending += data
        lines = self._pending.split(b"\n")
        rest = lines.pop()
        for line in lines:
            if len(line) + 1 > self.limit:
                raise ControlError(ErrorCode.TOO_LARGE, f"a line over {self.limit} bytes")
        if len(rest) >= self.limit:
            raise ControlError(ErrorCode.TOO_LARGE, f"a line over {self.limit} bytes")
        self._pending = bytearray(rest)
        return [bytes(line) for line in lines]

    @property
    def pending(self) -> int:
        """Bytes of a line not finished yet."""
        return len(self._pending)


class Args:
    """A request's ``args``, read by type; a missing or wrong one is ``bad_args`` naming it.
    Arguments a command does not read are ignored (a newer vmctl may send more)."""

    def __init__(self, values: Mapping[str, Json]) -> None:
        self.values = values

    def _bad(self, name: str, wanted: str) -> ControlError:
        return ControlError(ErrorCode.BAD_ARGS, f"{name} must be {wanted}")

    def integer(self, name: str, *, default: int | None = None, low: int, high: int) -> int:
        """An integer in ``low..high``; without a ``default`` it is required."""
        value = self.values.get(name)
        if value is None:
            if default is None:
                raise ControlError(ErrorCode.BAD_ARGS, f"{name} is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(name, f"an integer {low}..{high}")
        return value

    def text(self, name: str, *, required: bool = False, most: int = 256) -> str | None:
        value = self.values.get(name)
        if value is None:
            if required:
                raise ControlError(ErrorCode.BAD_ARGS, f"{name} is required")
            return None
        if not isinstance(value, str) or not 0 < len(value) <= most:
            raise self._bad(name, f"a string of 1..{most} characters")
        return value

    def flag(self, name: str) -> bool:
        value = self.values.get(name, False)
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def mapping(self, name: str) -> dict[str, Json]:
        value = self.values.get(name)
        if not isinstance(value, dict):
            raise self._bad(name, "a JSON object")
        return value
