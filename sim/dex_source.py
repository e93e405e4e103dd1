"""A simulated VMC that serves an EVA-DTS audit over DEX/UCS, read after read.

It plugs in at L0: the master end of a pty pair (raw bytes, no MDB escape; DEX is plain 8N1)
whose device end the reader opens as a DEX port. The protocol is :class:`UcsSource`, the same
sans-I/O core the unit tests run in memory; this module only gives it the loop's clock and the
descriptor, and can spoil the line on top: protocol faults (:class:`SourceFaults`: NAK or WACK
the DC's identification, blocks with a bad CRC, EOT before the last block, silence from a
session or a block on) and random byte corruption. A pty passes bytes on at once; with a
``baud`` the source delivers them no faster than an 8N1 UART would (:class:`SerialLine`), so
a read over the pty takes the time it takes on a real line.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from drivers.transport import read_some, write_all
from protocols.dex import Finished, Send
from protocols.dex.ucs import MAX_BLOCK, Failed, SourceFaults, UcsSource, UcsTimers, Wait
from protocols.errors import PortError

__all__ = ["DexSource", "SerialLine", "SourceFaults"]


class SerialLine:
    """One sender's side of an 8N1 line on a descriptor: ``baud`` / 10 bytes a second.

    Each write is handed over in chunks of about 5 ms of line time, each when its last byte
    would be through; the schedule runs on the loop's clock, so a late wake-up shortens the next
    wait instead of adding up. ``baud=None`` writes at once, as a pty does. Only the machine's
    side needs pacing to time a read: it sends the audit, the reader a few bytes a block.
    """

    def __init__(self, fd: int, url: str, baud: int | None = None) -> None:
        self.fd = fd
        self.url = url
        self.baud = baud
        self.sent = 0  # bytes written: what this side put on the wire
        self._free_at = 0.0

    async def write(self, data: bytes) -> None:
        self.sent += len(data)
        if self.baud is None:
            write_all(self.fd, self.url, data)
            return
        loop = asyncio.get_running_loop()
        byte_time = 10 / self.baud
        chunk = max(1, self.baud // 2000)
        self._free_at = max(self._free_at, loop.time())
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            self._free_at += len(piece) * byte_time
            await asyncio.sleep(self._free_at - loop.time())
            write_all(self.fd, self.url, piece)


class DexSource:
    """Serves ``audit`` on the descriptor ``fd``; :meth:`serve` is the task to run.

    ``audit`` may be a function, called at the start of each session, so a simulated VMC can
    serve an audit written from its counters as they are at that moment. ``baud`` paces what
    it sends (:class:`SerialLine`); ``line.sent`` counts it.
    """

    def __init__(
        self,
        fd: int,
        audit: bytes | Callable[[], bytes],
        *,
        comm_id: str = "SIM0000001",
        block_size: int = MAX_BLOCK,
        legacy: bool = False,
        id_first: bool = False,
        response_code: str = "00",
        faults: SourceFaults | None = None,
        corrupt: float = 0.0,
        seed: int = 0,
        timers: UcsTimers | None = None,
        baud: int | None = None,
    ) -> None:
        self.fd = fd
        self.url = f"dex-sim://fd{fd}"
        self.line = SerialLine(fd, self.url, baud)
        self.audit = audit
        self.comm_id = comm_id
        self.block_size = block_size
        self.legacy = legacy
        self.id_first = id_first
        self.response_code = response_code
        self.faults = faults
        self.corrupt = corrupt
        self.timers = timers
        self.results: list[Finished | Failed] = []
        self._rng = random.Random(seed)

    async def serve(self, reads: int | None = None) -> None:
        """Answer readers until cancelled (or for ``reads`` sessions, good or failed)."""
        served = 0
        while reads is None or served < reads:
            self.results.append(await self.serve_once())
            served += 1

    async def serve_once(self) -> Finished | Failed:
        loop = asyncio.get_running_loop()
        if not self.legacy and callable(self.audit):
            # The reader opens the session: take the counters as they are when it calls.
            ready: asyncio.Future[None] = loop.create_future()

            def called() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(self.fd, called)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
        source = UcsSource(
            self.audit() if callable(self.audit) else self.audit,
            self.comm_id,
            self.block_size,
            response_code=self.response_code,
            legacy=self.legacy,
            id_first=self.id_first,
            faults=self.faults,
            timers=self.timers,
        )
        readable = asyncio.Event()
        loop.add_reader(self.fd, readable.set)
        try:
            actions = source.start(loop.time())
            while True:
                deadline: float | None = None
                for action in actions:
                    if isinstance(action, Send):
                        await self.line.write(self._spoil(action.data))
                    elif isinstance(action, Wait):
                        deadline = action.until
                if source.result is not None:
                    return source.result
                timeout = None if deadline is None else max(0.0, deadline - loop.time())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await readable.wait()
                readable.clear()
                data = read_some(self.fd, self.url)
                if data is None:
                    raise PortError(f"{self.url}: the reader's end is gone")
                now = loop.time()
                actions = source.receive(data, now) if data else []
                actions += source.poll(now)
        finally:
            loop.remove_reader(self.fd)

    def _spoil(self, data: bytes) -> bytes:
        if self.corrupt <= 0:
            return data
        rng = self._rng
        return bytes(rng.randrange(256) if rng.random() < self.corrupt else b for b in data)
