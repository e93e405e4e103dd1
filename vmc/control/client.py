"""``vmctl``'s end of the control socket: blocking, one request at a time, bounded waits.

It imports nothing heavy (no asyncio, no rich): a ``vmctl status`` starts fast on a Pi.
"""

from __future__ import annotations

import errno
import itertools
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from protocols.errors import VmcError
from vmc.control.protocol import (
    Answer,
    ControlError,
    Json,
    LineBuffer,
    parse_answer,
    request_line,
)

CONNECT_TIMEOUT_S = 2.0
MAX_ANSWER = 32 * 1024 * 1024
"""Bytes in one line from vmcd (a DEX read's result carries the raw audit)."""
RECV_BYTES = 65536


class NotRunningError(VmcError):
    """Nothing serves the control socket: vmcd is not running (or serves another path)."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"vmcd is not running (no socket at {path})")
        self.path = path


class SocketPermissionError(VmcError):
    """The control socket is there but this user may not talk to it."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"permission denied on vmcd's control socket {path}: run vmctl as vmcd's user"
            " or a member of its group (vmc)"
        )
        self.path = path


class NoAnswerError(VmcError):
    """A running vmcd did not answer in time: whether the operation was applied is unknown
    (a repeat with its id says), or it stopped before the read it took had finished."""


class NoReplyError(VmcError):
    """vmcd did not answer in time, or closed the connection before its answer."""


class ControlClient:
    """One connection to vmcd's control socket (a context manager)."""

    def __init__(self, path: Path, *, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.path = path
        self._ids = itertools.count(1)
        self._lines = LineBuffer(MAX_ANSWER)
        self._ready: list[bytes] = []
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(connect_timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise SocketPermissionError(path) from None
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR, errno.ENOTSOCK):
                raise NotRunningError(path) from None
            if isinstance(exc, TimeoutError):
                raise NoReplyError(f"vmcd does not accept on {path} (busy?)") from None
            raise NoReplyError(f"cannot reach vmcd at {path}: {exc.strerror or exc}") from None
        self._sock = sock

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def call(self, cmd: str, args: Mapping[str, Json] | None = None, *, timeout: float) -> Json:
        """The result of ``cmd``; :class:`ControlError` for vmcd's error answer,
        :class:`NoReplyError` when none comes within ``timeout`` seconds."""
        return self.stream(cmd, args, lambda _event: None, timeout=timeout)

    def stream(
        self,
        cmd: str,
        args: Mapping[str, Json] | None,
        on_event: Callable[[Mapping[str, Json]], None],
        *,
        timeout: float | None,
    ) -> Json:
        """Like :meth:`call`, handing each event to ``on_event`` as it comes; ``timeout``
        bounds the whole command (None: until vmcd answers or closes)."""
        request_id = next(self._ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._send(request_line(request_id, cmd, args or {}), deadline)
        while True:
            answer = self._answer(deadline)
            if answer.id != request_id and not (answer.id is None and answer.error):
                continue  # an answer to nothing we asked (id null: to the connection itself)
            if answer.event is not None:
                on_event(answer.event)
                continue
            if answer.error is not None:
                raise answer.error
            return answer.result

    def _send(self, line: bytes, deadline: float | None) -> None:
        try:
            self._sock.settimeout(_left(deadline))
            self._sock.sendall(line)
        except TimeoutError:
            raise NoReplyError("vmcd did not take the request in time") from None
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                # vmcd may have answered and closed before it read the request (``busy``,
                # with every slot taken): that answer waits to be read.
                return
            raise NoReplyError(f"vmcd closed the connection ({exc.strerror or exc})") from None

    def _answer(self, deadline: float | None) -> Answer:
        while not self._ready:
            try:
                self._sock.settimeout(_left(deadline))
                data = self._sock.recv(RECV_BYTES)
            except TimeoutError:
                raise NoReplyError("vmcd did not answer in time") from None
            except OSError as exc:
                data = b""
                if exc.errno != errno.ECONNRESET:
                    raise NoReplyError(f"lost vmcd ({exc.strerror or exc})") from None
            if not data:
                raise NoReplyError("vmcd closed the connection before it answered")
            try:
                self._ready.extend(self._lines.feed(data))
            except ControlError as exc:
                raise NoReplyError(f"vmcd's answer is too long: {exc.message}") from None
        line = self._ready.pop(0)
        try:
            return parse_answer(line)
        except ControlError as exc:
            raise NoReplyError(exc.message) from None


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (at least a moment), or None to wait without end."""
    if deadline is None:
        return None
    return max(0.001, deadline - time.monotonic())
