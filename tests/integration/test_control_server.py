"""The control socket's server in one process: commands, streams, and clients that misbehave.

The server runs on this test's event loop; vmctl's blocking client runs in a thread, and the
misbehaving clients are raw sockets. A ticker on the same loop stands for the daemon's other
work: it must keep running whatever a client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import select
import socket
import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_for
from vmc.control.client import ControlClient, NoReplyError, NotRunningError
from vmc.control.protocol import MAX_REQUEST, Args, ControlError, Json, parse_answer
from vmc.control.server import (
    ControlServer,
    Emit,
    Registry,
    SocketError,
    bind,
    point_at,
    remove_if_ours,
)


class Ticker:
    """Counts turns of the event loop's clock: the daemon's other work, in miniature."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1

    async def advances(self) -> None:
        """The loop still runs: the count moves within a generous bound."""
        start = self.ticks
        await wait_for(lambda: self.ticks >= start + 3, 10, "the event loop to turn")


def _registry() -> Registry:
    registry = Registry()

    async def echo(args: Args) -> Json:
        return {"echo": dict(args.values)}

    async def count(args: Args, emit: Emit) -> Json:
        n = args.integer("n", default=3, low=0, high=10**6)
        size = args.integer("size", default=1, low=1, high=10**6)
        for i in range(n):
            await emit({"i": i, "pad": "x" * size})
        return {"sent": n}

    async def forever(args: Args, emit: Emit) -> Json:
        await emit({"started": True})
        await asyncio.Event().wait()
        return None

    async def slow(args: Args) -> Json:
        await asyncio.sleep(60)
        return None

    async def broken(args: Args) -> Json:
        raise RuntimeError("a bug")

    async def refused(args: Args) -> Json:
        raise ControlError("not_found", "nothing like that")

    registry.add("echo", echo, help="its args back")
    registry.add_stream("count", count, help="n events")
    registry.add_stream("forever", forever, help="one event, then waits")
    registry.add("slow", slow, help="longer than it may", timeout_s=0.2)
    registry.add("broken", broken, help="raises")
    registry.add("refused", refused, help="an error answer")
    return registry


class Served:
    def __init__(self, path: Path, server: ControlServer, ticker: Ticker) -> None:
        self.path = path
        self.server = server
        self.ticker = ticker

    async def call(self, cmd: str, args: Mapping[str, Json] | None = None) -> Any:
        def blocking() -> Any:
            with ControlClient(self.path) as client:
                return client.call(cmd, args, timeout=10)

        return await asyncio.to_thread(blocking)

    async def stream(self, cmd: str, args: Mapping[str, Json]) -> tuple[list[Any], Any]:
        events: list[Any] = []

        def blocking() -> Any:
            with ControlClient(self.path) as client:
                return client.stream(cmd, args, events.append, timeout=10)

        return events, await asyncio.to_thread(blocking)

    def raw(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(self.path))
        return sock


async def _read_all(sock: socket.socket) -> bytes:
    def blocking() -> bytes:
        sock.settimeout(10)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
        return data

    return await asyncio.to_thread(blocking)


def _send_until_closed(sock: socket.socket, data: bytes) -> None:
    """Send ``data``, or as much as the server takes before it answers and closes (what it
    does with an oversized request: the rest of it meets a closed socket)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


async def _recv(sock: socket.socket) -> bytes:
    """One answer line (the first thing the server sends here)."""
    sock.settimeout(10)
    data: bytes = await asyncio.to_thread(sock.recv, 65536)
    return data.splitlines()[0]


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **limits: Any) -> AsyncIterator[Served]:
    path = tmp_path / "c.sock"
    server = ControlServer(bind(path), _registry(), **limits)
    ticker = Ticker()
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(ticker.run())]
    try:
        yield Served(path, server, ticker)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_commands_answer_and_stream(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        assert await s.call("echo", {"a": [1, "é"]}) == {"echo": {"a": [1, "é"]}}
        events, result = await s.stream("count", {"n": 3})
        assert [e["i"] for e in events] == [0, 1, 2]
        assert result == {"sent": 3}


@pytest.mark.parametrize(
    ("cmd", "args", "code", "fragment"),
    [
        ("nothing", None, "unknown_command", "no command 'nothing'; known: broken, count"),
        ("count", {"n": -1}, "bad_args", "n must be an integer"),
        ("slow", None, "timeout", "slow did not finish within 0.2 s"),
        ("broken", None, "internal", "broken failed: RuntimeError('a bug')"),
        ("refused", None, "not_found", "nothing like that"),
    ],
)
async def test_errors_are_answers_and_the_server_serves_on(
    tmp_path: Path, cmd: str, args: dict[str, Any] | None, code: str, fragment: str
) -> None:
    async with served(tmp_path) as s:
        with pytest.raises(ControlError) as caught:
            await s.call(cmd, args)
        assert caught.value.code == code
        assert fragment in caught.value.message
        assert await s.call("echo") == {"echo": {}}


async def test_several_requests_on_one_connection_are_answered_in_order(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        sock = s.raw()
        sock.sendall(
            b'{"id": 1, "cmd": "echo", "args": {"n": 1}}\n{"id": 2, "cmd": "nothing"}\n'
            b'{"id": "three", "cmd": "count", "args": {"n": 1}}\n'
        )
        sock.shutdown(socket.SHUT_WR)
        lines = (await _read_all(sock)).splitlines()
        sock.close()
        answers = [parse_answer(line) for line in lines]
        assert [a.id for a in answers] == [1, 2, "three", "three"]
        assert answers[0].result == {"echo": {"n": 1}}
        assert answers[1].error is not None
        assert answers[2].event == {"i": 0, "pad": "x"}
        assert answers[3].result == {"sent": 1}


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "bad_request"),
        (b'{"id": 1, "cmd": "echo", "args": "x"}\n', "bad_request"),
        (b"\x00\xff" * 100 + b"\n", "bad_request"),
        (
            b'{"id": 1, "cmd": "echo", "args": {"pad": "' + b"x" * MAX_REQUEST + b'"}}\n',
            "too_large",
        ),
        (b"x" * (4 * MAX_REQUEST), "too_large"),  # no newline at all
    ],
)
async def test_garbage_is_answered_once_and_the_connection_closed(
    tmp_path: Path, sent: bytes, code: str
) -> None:
    async with served(tmp_path) as s:
        sock = s.raw()
        await asyncio.to_thread(_send_until_closed, sock, sent)
        lines = (await _read_all(sock)).splitlines()
        sock.close()
        assert len(lines) == 1
        answer = parse_answer(lines[0])
        assert answer.error is not None
        assert answer.error.code == code
        await s.ticker.advances()
        assert await s.call("echo") == {"echo": {}}


async def test_a_client_that_says_nothing_is_closed_after_a_while(tmp_path: Path) -> None:
    async with served(tmp_path, request_wait_s=0.3) as s:
        sock = s.raw()
        sock.sendall(b'{"id": 1, "cmd"')  # half a request, then silence
        lines = (await _read_all(sock)).splitlines()
        sock.close()
        answer = parse_answer(lines[0])
        assert answer.error is not None
        assert (answer.error.code, len(lines)) == ("timeout", 1)


async def test_a_client_that_never_reads_is_dropped_and_holds_nothing(tmp_path: Path) -> None:
    async with served(tmp_path, write_wait_s=0.5) as s:
        sock = s.raw()  # asks for 400 MB of events, reads none of them
        sock.sendall(b'{"id": 1, "cmd": "count", "args": {"n": 400, "size": 1000000}}\n')
        await wait_for(lambda: not s.server._connections, 20, "the stuck client dropped")
        await s.ticker.advances()
        assert await s.call("echo") == {"echo": {}}
        sock.close()


async def test_a_stream_ends_when_its_client_goes(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        sock = s.raw()
        sock.sendall(b'{"id": 1, "cmd": "forever"}\n')
        assert parse_answer(await _recv(sock)).event == {"started": True}
        assert len(s.server._connections) == 1
        sock.close()
        await wait_for(lambda: not s.server._connections, 10, "the stream ended")


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (which was sent nothing and never answered)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True
    finally:
        sock.setblocking(True)


async def test_idle_connections_give_way_and_busy_ones_say_so(tmp_path: Path) -> None:
    async with served(tmp_path, max_clients=4) as s:
        # Connect and say nothing, many of them (from a thread: the loop must accept meanwhile).
        idle = await asyncio.to_thread(lambda: [s.raw() for _ in range(100)])
        # Every one accepted (96 closed to make room), none left in the listen backlog: one
        # accepted later would make room by closing a connection made below (a broken pipe).
        await wait_for(
            lambda: sum(map(_closed_by_server, idle)) == 96 and len(s.server._connections) == 4,
            10,
            "4 idle",
        )
        assert s.server.served == 0
        assert await s.call("echo") == {"echo": {}}  # the oldest idle one made room
        streams = []
        for _ in range(4):
            sock = s.raw()
            sock.sendall(b'{"id": 1, "cmd": "forever"}\n')
            await _recv(sock)  # started: this slot serves a stream
            streams.append(sock)
        with pytest.raises(ControlError) as caught:  # nobody idle to make room
            await s.call("echo")
        assert caught.value.code == "busy"
        streams.pop().close()
        await wait_for(lambda: len(s.server._connections) < 4, 10, "a slot free")
        assert await s.call("echo") == {"echo": {}}
        await s.ticker.advances()
        for sock in idle + streams:
            sock.close()


async def test_a_busy_answer_sent_before_the_request_is_still_read(tmp_path: Path) -> None:
    # With every slot taken vmcd answers busy and closes at once: a request written after the
    # close fails with a broken pipe, and the client must still read the answer waiting there.
    async with served(tmp_path, max_clients=1) as s:
        stream = s.raw()
        stream.sendall(b'{"id": 1, "cmd": "forever"}\n')
        await _recv(stream)  # the only slot serves a stream
        client = ControlClient(s.path)
        try:
            readable, _, _ = await asyncio.to_thread(select.select, [client._sock], [], [], 10)
            assert readable, "no busy answer"
            await wait_for(lambda: len(s.server._connections) == 1, 10, "the busy one closed")
            with pytest.raises(ControlError) as caught:
                await asyncio.to_thread(client.call, "echo", None, timeout=10)
            assert caught.value.code == "busy"
        finally:
            client.close()
            stream.close()


async def test_stopping_the_server_closes_its_clients(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    server = ControlServer(bind(path), _registry())
    task = asyncio.create_task(server.run())
    await wait_for(path.exists, 10, "the socket")

    def follow() -> Any:
        with ControlClient(path) as client:
            return client.stream("forever", {}, lambda _e: None, timeout=30)

    following = asyncio.create_task(asyncio.to_thread(follow))
    await wait_for(lambda: server._connections, 10, "the stream running")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(NoReplyError, match="closed the connection"):
        await following


# --- the socket file ------------------------------------------------------------------------


def test_socket_mode_and_group(tmp_path: Path) -> None:
    other = next((g for g in grp.getgrall() if g.gr_gid != os.getegid()), None)
    if other is None:
        pytest.skip("no group besides our own")
    listener = bind(tmp_path / "a.sock", group=other.gr_name)
    try:
        found = os.stat(tmp_path / "a.sock")
        assert stat.S_ISSOCK(found.st_mode)
        assert stat.S_IMODE(found.st_mode) == 0o660
        assert found.st_gid == other.gr_gid
    finally:
        listener.close()
    listener = bind(tmp_path / "b.sock", group="no-such-group-here")
    try:
        found = os.stat(tmp_path / "b.sock")
        assert (stat.S_IMODE(found.st_mode), found.st_gid) == (0o660, os.getegid())
    finally:
        listener.close()


def test_a_stale_socket_is_replaced_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    crashed = bind(path)
    crashed.close()  # the file stays, nobody listens: a vmcd that crashed
    live = bind(path)
    try:
        with pytest.raises(SocketError, match="another vmcd serves it"):
            bind(path)
        with ControlClient(path):
            pass  # the live one is still there
    finally:
        live.close()
    path.unlink()
    path.write_text("mine")
    with pytest.raises(SocketError, match="something else is there"):
        bind(path)
    assert path.read_text() == "mine"


def test_socket_path_mistakes_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SocketError, match="path too long"):
        bind(tmp_path / ("x" * 120))
    with pytest.raises(SocketError, match="No such file or directory"):
        bind(tmp_path / "missing" / "c.sock")


def test_client_without_a_daemon(tmp_path: Path) -> None:
    with pytest.raises(NotRunningError, match=rf"vmcd is not running \(no socket at {tmp_path}"):
        ControlClient(tmp_path / "c.sock")
    bind(tmp_path / "c.sock").close()  # a stale socket: nobody listens
    with pytest.raises(NotRunningError):
        ControlClient(tmp_path / "c.sock")


def test_pointer_to_the_socket_elsewhere(tmp_path: Path) -> None:
    target = tmp_path / "run" / "c.sock"
    target.parent.mkdir()
    listener = bind(target)
    pointer = tmp_path / "vmcd.sock"
    try:
        assert point_at(pointer, target)
        with ControlClient(pointer):
            pass  # connecting through the symlink reaches the socket
        assert point_at(pointer, target)  # again (a restart): replaced, not refused
        inode = os.lstat(pointer).st_ino
        remove_if_ours(pointer, inode + 1)  # not ours any more: left alone
        assert pointer.is_symlink()
        remove_if_ours(pointer, inode)
        assert not pointer.exists()
        (tmp_path / "file").write_text("")
        assert not point_at(tmp_path / "file", target)
    finally:
        listener.close()
