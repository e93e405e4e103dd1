"""vmcd's end of the control socket: the listening socket, the commands, the connections.

Commands are registered by name on a :class:`Registry`: an async handler given the request's
:class:`~vmc.control.protocol.Args` returns the result (``add``), or is also given ``emit``
to send events before it returns (``add_stream``). A handler raises
:class:`~vmc.control.protocol.ControlError` to answer with an error; anything else it raises
is a bug, logged and answered ``internal``, and the daemon serves on.

Nothing a client does can stall the daemon:

- a request line is bounded (:data:`~vmc.control.protocol.MAX_REQUEST`); a longer one is
  answered ``too_large`` and the connection closed, as is one that is not a JSON object;
- a connection must send its request within :data:`REQUEST_WAIT_S`, and every answer it is
  sent must leave within :data:`WRITE_WAIT_S` (a client that does not read is cut off), so
  no connection holds memory or a slot for long without doing its part;
- a command runs for its own bounded time (``timeout_s``; a stream, until its client goes);
- at most :data:`MAX_CLIENTS` connections are served; a new one takes the slot of the
  connection idle longest (waiting for a request), or is answered ``busy`` if none is idle.

Handlers run on the daemon's event loop: they must not block (journal reads and one commit
are fine; a DEX read or a bus exchange is awaited, never waited for).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from protocols.errors import VmcError
from vmc.control.protocol import (
    MAX_REQUEST,
    Args,
    ControlError,
    ErrorCode,
    Json,
    Request,
    RequestId,
    error_line,
    event_line,
    parse_request,
    result_line,
)

log = structlog.get_logger("vmc.control")

MAX_CLIENTS = 16
REQUEST_WAIT_S = 10.0
WRITE_WAIT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
"""A command's time unless it registers another."""
SOCKET_MODE = 0o660
SOCKET_GROUP = "vmc"

Emit = Callable[[Mapping[str, Json]], Awaitable[None]]
Handler = Callable[[Args], Awaitable[Json]]
StreamHandler = Callable[[Args, Emit], Awaitable[Json]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    handler: Handler | None
    stream: StreamHandler | None
    timeout_s: float | None
    help: str


class Registry:
    """The commands the socket serves, by name."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def add(
        self, name: str, handler: Handler, *, help: str, timeout_s: float = COMMAND_TIMEOUT_S
    ) -> None:
        """``name`` answers with what ``handler(args)`` returns, within ``timeout_s``."""
        self._put(Command(name, handler, None, timeout_s, help))

    def add_stream(
        self, name: str, handler: StreamHandler, *, help: str, timeout_s: float | None = None
    ) -> None:
        """``name`` sends the events ``handler(args, emit)`` emits, then what it returns;
        ``timeout_s`` None: until the client goes (its writes are bounded all the same)."""
        self._put(Command(name, None, handler, timeout_s, help))

    def _put(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"control command {command.name!r} is registered twice")
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def commands(self) -> list[Command]:
        return sorted(self._commands.values(), key=lambda c: c.name)


class SocketError(VmcError):
    """The control socket cannot be served at its path; one line for the operator."""


def bind(path: Path, group: str = SOCKET_GROUP) -> socket.socket:
    """The listening socket at ``path``, mode 0660 and of ``group`` when it exists.

    A socket file left by a vmcd that crashed (nothing accepts on it) is replaced; one that
    answers belongs to another vmcd and is refused, as is anything at ``path`` that is not a
    socket or a symlink. Call before any thread exists: the umask is changed for the bind.
    """
    _clear(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~SOCKET_MODE)
    try:
        listener.bind(str(path))
    except OSError as exc:
        listener.close()
        raise SocketError(f"control socket {path}: {_reason(exc)}") from exc
    finally:
        os.umask(old)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = None  # no such group: the socket keeps vmcd's own group
    try:
        if gid is not None and gid != os.stat(path).st_gid:
            os.chown(path, -1, gid)
        os.chmod(path, SOCKET_MODE)
        listener.listen(64)
    except OSError as exc:
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise SocketError(f"control socket {path}: {_reason(exc)}") from exc
    listener.setblocking(False)
    return listener


def _reason(exc: OSError) -> str:
    if "too long" in str(exc):
        return "path too long for a unix socket (at most 107 bytes); give a shorter one"
    return exc.strerror or str(exc)


def _clear(path: Path) -> None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketError(f"control socket {path}: {_reason(exc)}") from exc
    if stat.S_ISLNK(found.st_mode):
        path.unlink()
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise SocketError(f"control socket {path}: something else is there; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketError(f"control socket {path}: {_reason(exc)}") from exc
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a crashed vmcd's: nobody listens
        return
    finally:
        probe.close()
    raise SocketError(
        f"control socket {path}: another vmcd serves it; stop it or give this one"
        " --control-socket PATH"
    )


def point_at(link: Path, target: Path) -> bool:
    """Make ``link`` a symlink to ``target`` (where vmctl looks when it only knows the state
    directory); an old symlink or dead socket there is replaced. False if something else is."""
    with contextlib.suppress(FileNotFoundError):
        found = os.lstat(link)
        if not (stat.S_ISLNK(found.st_mode) or stat.S_ISSOCK(found.st_mode)):
            return False
    fresh = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        fresh.unlink()
    os.symlink(target, fresh)
    os.replace(fresh, link)
    return True


def remove_if_ours(path: Path, inode: int) -> None:
    """Unlink ``path`` if it is still the file we made (a newer vmcd may have replaced it)."""
    with contextlib.suppress(OSError):
        if os.lstat(path).st_ino == inode:
            path.unlink()


class _Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.idle_since: float | None = time.monotonic()

    def drop(self) -> None:
        self.writer.transport.abort()


class _GoneError(Exception):
    """The client stopped reading or went away: nothing more can be sent to it."""


class ControlServer:
    """Serves the registry's commands on a bound, listening socket (see :func:`bind`)."""

    def __init__(
        self,
        listener: socket.socket,
        registry: Registry,
        *,
        max_clients: int = MAX_CLIENTS,
        request_wait_s: float = REQUEST_WAIT_S,
        write_wait_s: float = WRITE_WAIT_S,
    ) -> None:
        self.listener = listener
        self.registry = registry
        self.max_clients = max_clients
        self.request_wait_s = request_wait_s
        self.write_wait_s = write_wait_s
        self._connections: dict[_Connection, asyncio.Task[None]] = {}
        self.served = 0

    async def run(self) -> None:
        """Serve until cancelled; then every connection is closed."""
        server = await asyncio.start_unix_server(self._serve, sock=self.listener, limit=MAX_REQUEST)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            server.close()
            for connection, task in list(self._connections.items()):
                connection.drop()
                task.cancel()
            tasks = list(self._connections.values())
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        if not self._admit(connection):
            log.debug("control_busy", clients=len(self._connections))
            writer.write(error_line(None, ErrorCode.BUSY, "vmcd serves too many clients now"))
            writer.transport.close()  # what is buffered still goes; nothing is waited for
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[connection] = task
        try:
            while await self._next(reader, connection):
                pass
        except _GoneError:
            pass
        finally:
            self._connections.pop(connection, None)
            writer.close()

    def _admit(self, connection: _Connection) -> bool:
        """Room for ``connection``: a free slot, or the one of the connection idle longest."""
        if len(self._connections) < self.max_clients:
            return True
        idle = [c for c in self._connections if c.idle_since is not None]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since or 0.0)
        log.debug("control_idle_dropped")
        oldest.drop()  # its read ends at once, and its task with it
        del self._connections[oldest]
        return True

    async def _next(self, reader: asyncio.StreamReader, connection: _Connection) -> bool:
        """Read and answer one request; False when the connection is done."""
        connection.idle_since = time.monotonic()
        try:
            async with asyncio.timeout(self.request_wait_s):
                line = await reader.readuntil(b"\n")
        except TimeoutError:
            await self._send(connection, error_line(None, ErrorCode.TIMEOUT, "no request in time"))
            return False
        except asyncio.IncompleteReadError:
            return False  # the client went (a half line without its newline is dropped)
        except asyncio.LimitOverrunError:
            await self._refuse(connection, ControlError(ErrorCode.TOO_LARGE, _too_large()))
            return False
        except OSError:
            return False
        connection.idle_since = None
        try:
            request = parse_request(line)
        except ControlError as exc:
            await self._refuse(connection, exc)
            return False
        self.served += 1
        command = self.registry.get(request.cmd)
        if command is None:
            known = ", ".join(c.name for c in self.registry.commands())
            await self._refuse(
                connection,
                ControlError(
                    ErrorCode.UNKNOWN_COMMAND, f"no command {request.cmd!r}; known: {known}"
                ),
                request.id,
            )
            return True
        log.debug("control_request", cmd=request.cmd)
        if command.stream is None:
            await self._send(connection, await self._unary(command, request))
        else:
            await self._stream(command, request, reader, connection)
        return True

    async def _refuse(
        self, connection: _Connection, error: ControlError, request_id: RequestId = None
    ) -> None:
        log.debug("control_refused", code=error.code, error=error.message)
        line = error_line(request_id or error.request_id, error.code, error.message)
        await self._send(connection, line)

    async def _unary(self, command: Command, request: Request) -> bytes:
        assert command.handler is not None
        try:
            async with asyncio.timeout(command.timeout_s):
                result = await command.handler(Args(request.args))
            return result_line(request.id, result)
        except ControlError as exc:
            return error_line(request.id, exc.code, exc.message)
        except TimeoutError:
            return error_line(request.id, ErrorCode.TIMEOUT, _timed_out(command))
        except Exception as exc:  # a bug in one command must not take the daemon down
            return _internal(command, request, exc)

    async def _stream(
        self,
        command: Command,
        request: Request,
        reader: asyncio.StreamReader,
        connection: _Connection,
    ) -> None:
        """Run a streaming command until it returns, its time is up or its client goes."""
        assert command.stream is not None
        handler = command.stream

        async def emit(event: Mapping[str, Json]) -> None:
            await self._send(connection, event_line(request.id, event))

        async def run() -> bytes:
            try:
                async with asyncio.timeout(command.timeout_s):
                    return result_line(request.id, await handler(Args(request.args), emit))
            except ControlError as exc:
                return error_line(request.id, exc.code, exc.message)
            except TimeoutError:
                return error_line(request.id, ErrorCode.TIMEOUT, _timed_out(command))
            except _GoneError:
                raise
            except Exception as exc:  # a bug in one command must not take the daemon down
                return _internal(command, request, exc)

        running = asyncio.create_task(run())
        gone = asyncio.create_task(_until_closed(reader))
        try:
            await asyncio.wait((running, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not running.done():
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError, _GoneError):
                    await running
                raise _GoneError
        await self._send(connection, running.result())

    async def _send(self, connection: _Connection, line: bytes) -> None:
        writer = connection.writer
        if writer.is_closing():
            raise _GoneError
        writer.write(line)
        try:
            async with asyncio.timeout(self.write_wait_s):
                await writer.drain()
        except (TimeoutError, OSError) as exc:
            log.debug("control_client_dropped", reason=type(exc).__name__)
            connection.drop()
            raise _GoneError from exc


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes its end (what it sends meanwhile is dropped)."""
    with contextlib.suppress(OSError):
        while await reader.read(MAX_REQUEST):
            pass


def _too_large() -> str:
    return f"a request is at most {MAX_REQUEST} bytes"


def _timed_out(command: Command) -> str:
    return f"{command.name} did not finish within {command.timeout_s:g} s"


def _internal(command: Command, request: Request, exc: Exception) -> bytes:
    log.error("control_command_failed", cmd=command.name, exc_info=exc)
    return error_line(request.id, ErrorCode.INTERNAL, f"{command.name} failed: {exc!r}")
