"""A simulated VMC: the bus master that initialises, polls and sells through our reader.

It plugs in at L0 (any MDB port: the master end of a pty pair, a loopback end, a UART) and
checks the peripheral's timing on every exchange: first answer byte within 5 ms of our last
byte, no gap over 1 ms inside an answer. Every violation is kept for the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from drivers.transport import MdbPort
from protocols.errors import RemoteProtocolError, VmcError
from protocols.mdb import commands as c
from protocols.mdb.money import BusMoney
from protocols.mdb.words import Word, WordDecoder, checksum, vmc_words
from sim import checks
from sim.trace import Direction, TraceRecorder
from sim.vmc_counters import SalesCounters

RESPONSE_WINDOW_S = 0.005
INTER_BYTE_S = 0.001
PROBE_SETTLE_S = 0.1
_T = TypeVar("_T")
_R = TypeVar("_R")
REALTIME_PRIORITY = 10  # below vmcd's bus process (20): the reader under test comes first


def measure_in_realtime() -> None:
    """SCHED_FIFO for this process where allowed (see :func:`in_realtime`).

    A VMC times its reader from the moment its own loop sees the answer: on a busy machine a
    normal-priority simulator is itself late to look, and counts the reader late. Children
    (vmcd, mosquitto) and threads do not inherit the policy.
    """
    policy = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
    with contextlib.suppress(OSError):  # not allowed: the timing check will say so
        os.sched_setscheduler(0, policy, os.sched_param(REALTIME_PRIORITY))


def in_realtime() -> bool:
    """Whether this process runs under a realtime scheduling policy."""
    policy = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
    return policy in (os.SCHED_FIFO, os.SCHED_RR)


class VmcSimError(VmcError):
    """The reader did not behave as a VMC requires."""


@dataclass(frozen=True, slots=True)
class Answer:
    words: tuple[Word, ...]
    response_s: float | None
    max_gap_s: float

    @property
    def timed_out(self) -> bool:
        return not self.words

    @property
    def is_ack(self) -> bool:
        return len(self.words) == 1 and self.words[0].value == c.ACK

    @property
    def data(self) -> bytes:
        """The answer without its CHK (empty for ACK/NAK and silence)."""
        if len(self.words) < 2:
            return b""
        return bytes(w.value for w in self.words[:-1])

    @property
    def code(self) -> int | None:
        data = self.data
        return data[0] if data else None


@dataclass
class TimingStats:
    response_s: list[float] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    timeouts: int = 0
    realtime: bool = field(default_factory=in_realtime)

    def check(self) -> checks.Check:
        """The bus-timing check of a run: FAILED on any violation."""
        answers = len(self.response_s) + self.timeouts
        found = checks.timing(self.violations, answers)
        if found.ok or self.realtime:
            return found
        note = "; the VMC ran without realtime scheduling, so some may be its own delay"
        return dataclasses.replace(found, detail=found.detail + note)

    def add(self, what: str, answer: Answer) -> None:
        if answer.response_s is None:
            self.timeouts += 1
            self.violations.append(f"{what}: no answer")
            return
        self.response_s.append(answer.response_s)
        if answer.response_s > RESPONSE_WINDOW_S:
            self.violations.append(f"{what}: answered after {answer.response_s * 1000:.2f} ms")
        if answer.max_gap_s > INTER_BYTE_S:
            self.violations.append(f"{what}: {answer.max_gap_s * 1000:.2f} ms between bytes")


@dataclass(frozen=True, slots=True)
class VmcIdentity:
    """What the simulated VMC says of itself in EXPANSION REQUEST ID (MDB/ICP 4.2 §7.4.11):
    a three-letter manufacturer code, a 12-character serial and model, a BCD software version."""

    manufacturer: str = "SIM"
    serial: str = "SIMVMC000001"
    model: str = "vmc-sim"
    software_version: int = 0x0100

    def to_bytes(self) -> bytes:
        def field(text: str, width: int) -> bytes:
            return text.encode("ascii")[:width].ljust(width, b" ")

        return (
            field(self.manufacturer, 3)
            + field(self.serial, 12)
            + field(self.model, 12)
            + self.software_version.to_bytes(2, "big")
        )


@dataclass
class ReaderInfo:
    level: int = 1
    currency: int = 0  # as sent, echoed in the expanded commands
    currency_code: c.CurrencyCode | None = None  # decoded; None: unknown (0xFFFF)
    money: BusMoney = field(default_factory=BusMoney)
    max_response_time: int = 5
    options: int = 0
    features: int = 0

    @property
    def iso_currency(self) -> int | None:
        """The ISO 4217 numeric code of the MDB currency (0x1nnn, digits in BCD), if it is one."""
        digits = f"{self.currency & 0xFFF:03x}"
        return int(digits) if self.currency >> 12 == 1 and digits.isdigit() else None

    def describe(self) -> str:
        """What the reader told the VMC, in words."""
        iso = self.iso_currency
        currency = f"ISO 4217 {iso:03d}" if iso is not None else f"code {self.currency:#06x}"
        features = [f.name.lower().replace("_", " ") for f in c.Feature if self.features & f]
        return (
            f"level {self.level}, currency {currency} with {self.money.decimal_places} decimals,"
            f" answers within {self.max_response_time} s,"
            f" level-3 features: {', '.join(features) or 'none'}"
        )


class WordReader:
    """Async reads of decoded words from a port, with arrival times."""

    def __init__(self, port: MdbPort) -> None:
        self.port = port
        self.decoder = WordDecoder()
        self._buffer: list[tuple[Word, float]] = []
        self._event = asyncio.Event()
        asyncio.get_running_loop().add_reader(port.fileno(), self._readable)

    def _readable(self) -> None:
        now = time.perf_counter()
        try:
            data = self.port.read_available()
        except VmcError:
            data = b""
        for word in self.decoder.feed(data):
            self._buffer.append((word, now))
        self._event.set()

    def discard(self) -> None:
        self._buffer.clear()

    async def block(self, timeout: float) -> list[tuple[Word, float]]:
        """Words up to and including the next mode-bit word; [] on timeout."""
        deadline = time.perf_counter() + timeout
        while True:
            for i, (word, _) in enumerate(self._buffer):
                if word.mode:
                    out, self._buffer = self._buffer[: i + 1], self._buffer[i + 1 :]
                    return out
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                self._buffer.clear()
                return []
            self._event.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a stop's cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._event.wait()

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.port.fileno())


class VmcMaster:
    """One VMC talking to one cashless address."""

    def __init__(
        self,
        port: MdbPort,
        *,
        address: int = 0x10,
        answer_timeout: float = 0.05,
        recorder: TraceRecorder | None = None,
        discard_unread: Callable[[], None] | None = None,
        identity: VmcIdentity | None = None,
    ) -> None:
        """``discard_unread`` drops what the reader has not read yet (:class:`sim.ports.SimPty`);
        ``identity``: what it tells the reader in EXPANSION REQUEST ID."""
        self.port = port
        self.identity = identity or VmcIdentity()
        self.discard_unread = discard_unread
        self.address = address
        self.answer_timeout = answer_timeout
        self.recorder = recorder
        self.stats = TimingStats()
        self.reader = WordReader(port)
        self.info = ReaderInfo()
        self.wide = False
        self.sales = SalesCounters()
        self.session: c.BeginSession | None = None  # the last BEGIN SESSION, decoded
        self._requested: tuple[int, int] | None = None  # (price_raw, item) of the open vend

    async def send_raw(self, words: list[Word], what: str, *, timed: bool = True) -> Answer:
        """Write a block as given (no CHK added) and wait for the answer.

        ``timed=False`` is for probing a reader that may not be up yet: silence, or an answer
        to bytes that waited for the port to open, says nothing about its timing, and an
        unanswered probe is not recorded.
        """
        self.reader.discard()
        self.port.write_words(words)
        sent = time.perf_counter()
        got = await self.reader.block(self.answer_timeout)
        if not got:
            answer = Answer((), None, 0.0)
        else:
            gaps = [b[1] - a[1] for a, b in itertools.pairwise(got)]
            answer = Answer(tuple(w for w, _ in got), got[0][1] - sent, max(gaps, default=0.0))
        if timed:
            self.stats.add(what, answer)
        if self.recorder is not None and (timed or answer.words):
            # An unanswered probe is left out: replayed against a reader that is up, it would
            # expect silence where the reader rightly answers.
            self.recorder.add(Direction.VMC, words, what)
            if answer.words:
                self.recorder.add(Direction.PER, answer.words)
        return answer

    async def command(self, payload: bytes, what: str, *, timed: bool = True) -> Answer:
        """Send address|payload with CHK; ACK a data answer (RET once on a bad CHK)."""
        block = bytes((self.address | payload[0], *payload[1:]))
        block += bytes((checksum(block),))
        answer = await self.send_raw(vmc_words(block), what, timed=timed)
        for _ in range(2):
            if len(answer.words) < 2:
                return answer
            data = bytes(w.value for w in answer.words)
            if checksum(data[:-1]) == data[-1]:
                self._send_reply(c.ACK)
                return answer
            answer = await self._retransmit(what)
        raise VmcSimError(f"{what}: answer failed its checksum twice")

    async def _retransmit(self, what: str) -> Answer:
        self.reader.discard()
        self.port.write_words([Word(c.RET)])
        sent = time.perf_counter()
        got = await self.reader.block(self.answer_timeout)
        if not got:
            return Answer((), None, 0.0)
        return Answer(tuple(w for w, _ in got), got[0][1] - sent, 0.0)

    def _send_reply(self, value: int) -> None:
        self.port.write_words([Word(value)])
        if self.recorder is not None:
            self.recorder.add(Direction.VMC, [Word(value)])

    # --- commands ------------------------------------------------------------------------

    async def poll(self) -> Answer:
        answer = await self.command(bytes((c.Cmd.POLL,)), "POLL")
        if answer.code == c.Resp.BEGIN_SESSION:
            self.session = self._decode(c.BeginSession.from_bytes, answer.data, "BEGIN SESSION")
        return answer

    async def session_complete(self) -> Answer:
        """The session is over for the VMC: the next vend counts by its own session's type."""
        self.session = None
        body = bytes((c.Cmd.VEND, c.VendSub.SESSION_COMPLETE))
        return await self.command(body, "SESSION COMPLETE")

    async def reset(self, *, timed: bool = True) -> Answer:
        self.wide = False
        return await self.command(bytes((c.Cmd.RESET,)), "RESET", timed=timed)

    def bus_reset(self) -> None:
        """A BREAK on the line: what a UART receiver reports as FF 00 00."""
        self.wide = False
        words = [Word(0x00, mode=True)]
        self.port.write_words(words)
        if self.recorder is not None:
            self.recorder.add(Direction.VMC, words, "BUS RESET")

    def money(self, minor: int) -> int:
        return self.info.money.to_bus(minor, wide=self.wide)

    def _price_item(self, price_raw: int, item: int) -> bytes:
        return price_raw.to_bytes(4 if self.wide else 2, "big") + item.to_bytes(2, "big")

    async def vend_request(self, price_raw: int, item: int) -> Answer:
        body = bytes((c.Cmd.VEND, c.VendSub.REQUEST)) + self._price_item(price_raw, item)
        self._requested = (price_raw, item)
        return await self.command(body, "VEND REQUEST")

    async def vend_cancel(self) -> Answer:
        return await self.command(bytes((c.Cmd.VEND, c.VendSub.CANCEL)), "VEND CANCEL")

    async def vend_success(self, item: int) -> Answer:
        """The product dropped: the VMC counts the sale whatever the reader answers."""
        if self._requested is not None:
            price_raw, _ = self._requested
            self.sales.vended(
                item, self.info.money.to_minor(price_raw), cash=False, payment=self._payment()
            )
            self._requested = None
        body = bytes((c.Cmd.VEND, c.VendSub.SUCCESS)) + item.to_bytes(2, "big")
        return await self.command(body, "VEND SUCCESS")

    def _payment(self) -> c.PaymentType:
        """The session's payment type (its top two bits), as the VMC counts the vend."""
        bits = 0 if self.session is None else self.session.payment_type & 0xC0
        return c.PaymentType(bits) if bits in set(c.PaymentType) else c.PaymentType.NORMAL

    async def vend_failure(self) -> Answer:
        return await self.command(bytes((c.Cmd.VEND, c.VendSub.FAILURE)), "VEND FAILURE")

    async def cash_sale(self, price_raw: int, item: int) -> Answer:
        self.sales.vended(item, self.info.money.to_minor(price_raw), cash=True)
        body = bytes((c.Cmd.VEND, c.VendSub.CASH_SALE)) + self._price_item(price_raw, item)
        if self.wide:
            body += self.info.currency.to_bytes(2, "big")
        return await self.command(body, "CASH SALE")

    async def reader_enable(self, enable: bool = True) -> Answer:
        sub = c.ReaderSub.ENABLE if enable else c.ReaderSub.DISABLE
        return await self.command(bytes((c.Cmd.READER, sub)), "READER ENABLE/DISABLE")

    async def wait_for_reader(
        self,
        timeout: float,
        *,
        probe: Callable[[], Awaitable[Answer]] | None = None,
    ) -> float:
        """Probe (RESET by default) until the reader answers; the seconds that took.

        The probes are untimed: while a reader is starting, silence is expected, and an
        answer to a probe that waited in the pty for the port to open says nothing of the bus.
        On a port made by the simulator, the probes nobody read are dropped before each new
        one, so a reader that comes late does not find a backlog of them.
        """
        send = probe or (lambda: self.reset(timed=False))
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if self.discard_unread is not None:
                self.discard_unread()
            if not (await send()).timed_out:
                # Probes sent while the reader was starting were queued, and each is answered
                # now: let those answers arrive and drop them, or they pass for later answers.
                await asyncio.sleep(PROBE_SETTLE_S)
                self.reader.discard()
                return loop.time() - started
            if loop.time() - started > timeout:
                raise VmcSimError(f"the reader did not answer within {timeout:g} s")
            await asyncio.sleep(0.05)

    async def initialise(
        self,
        *,
        level: int = 3,
        columns: int = 16,
        rows: int = 2,
        want_features: int = int(c.Feature.ALWAYS_IDLE | c.Feature.WIDE_MONEY),
        max_price: int = 10000,
        min_price: int = 5,
        wait_s: float = 10.0,
    ) -> ReaderInfo:
        """The init sequence real VMCs run: reset, setup, prices, ID, features, enable."""
        await self.wait_for_reader(wait_s)
        for _ in range(10):
            answer = await self.poll()
            if answer.code == c.Resp.JUST_RESET or answer.is_ack:
                break
        setup = bytes((c.Cmd.SETUP, c.SetupSub.CONFIG_DATA, level, columns, rows, 1))
        answer = await self.command(setup, "SETUP CONFIG")
        if answer.code != c.Resp.READER_CONFIG or len(answer.data) < 8:
            raise VmcSimError(f"SETUP config answered {answer.words}")
        d = answer.data
        currency = int.from_bytes(d[2:4], "big")
        self.info = ReaderInfo(
            level=d[1],
            currency=currency,
            currency_code=self._decode(c.CurrencyCode.from_word, currency, "READER CONFIG"),
            money=BusMoney(d[4], d[5]),
            max_response_time=d[6],
            options=d[7],
        )
        # A VMC sends 16-bit max/min first; the raw values are in the reader's bus units.
        prices = (min(self.money(max_price), 0xFFFE), self.money(min_price))
        body = bytes((c.Cmd.SETUP, c.SetupSub.MAX_MIN_PRICES))
        body += prices[0].to_bytes(2, "big") + prices[1].to_bytes(2, "big")
        await self._expect_ack(body, "SETUP MAX/MIN")
        answer = await self.command(
            bytes((c.Cmd.EXPANSION, c.ExpansionSub.REQUEST_ID)) + self.identity.to_bytes(),
            "EXPANSION ID",
        )
        if answer.code != c.Resp.PERIPHERAL_ID:
            raise VmcSimError(f"EXPANSION ID answered {answer.words}")
        if level >= 3 and self.info.level >= 3 and len(answer.data) >= 34:
            offered = int.from_bytes(answer.data[30:34], "big")
            self.info.features = offered & want_features
            body = bytes((c.Cmd.EXPANSION, c.ExpansionSub.OPTIONAL_FEATURES))
            await self._expect_ack(body + self.info.features.to_bytes(4, "big"), "FEATURES")
            self.wide = bool(self.info.features & c.Feature.WIDE_MONEY)
            if self.wide:
                body = bytes((c.Cmd.SETUP, c.SetupSub.MAX_MIN_PRICES))
                body += self.money(max_price).to_bytes(4, "big")
                body += self.money(min_price).to_bytes(4, "big")
                body += self.info.currency.to_bytes(2, "big")
                await self._expect_ack(body, "SETUP MAX/MIN (wide)")
        await self._expect_ack(bytes((c.Cmd.READER, c.ReaderSub.ENABLE)), "READER ENABLE")
        return self.info

    @staticmethod
    def _decode(parse: Callable[[_T], _R], raw: _T, what: str) -> _R:
        """A field the reader sent, decoded; a VMC refuses one it cannot read."""
        try:
            return parse(raw)
        except RemoteProtocolError as exc:
            raise VmcSimError(f"{what}: {exc}") from exc

    async def _expect_ack(self, body: bytes, what: str) -> None:
        answer = await self.command(body, what)
        if not answer.is_ack:
            raise VmcSimError(f"{what} answered {[str(w) for w in answer.words]}, not ACK")

    def close(self) -> None:
        self.reader.close()
