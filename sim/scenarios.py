"""Customers at the simulated machine: each plays one session through the VMC master.

A session is "ok" when the reader led it to a legal end (vended, failed and refunded, denied,
cancelled, cash sale booked, walked away, reset recovered); anything else is an error with
the answer that broke it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from protocols.mdb import commands as c
from sim.vmc_master import Answer, VmcMaster

BUS_SETUP_S = 0.2  # t-setup: a VMC waits this long after a bus reset before talking
PRICES_MINOR = (50, 100, 120, 150, 200, 250)
CUSTOMERS = (
    "purchase",
    "vend_failure",
    "cancel",
    "walk_away",
    "cash_sale",
    "multi_vend",
    "vmc_reset",
)
DEFAULT_WEIGHTS = {
    "purchase": 10,
    "vend_failure": 2,
    "cancel": 2,
    "walk_away": 1,
    "cash_sale": 2,
    "multi_vend": 2,
    "vmc_reset": 1,
}


@dataclass(frozen=True, slots=True)
class SessionResult:
    number: int
    customer: str
    outcome: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    results: list[SessionResult] = field(default_factory=list)

    @property
    def sessions_ok(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def errors(self) -> list[SessionResult]:
        return [r for r in self.results if not r.ok]

    def outcomes(self) -> Counter[str]:
        return Counter(r.outcome for r in self.results)


class SessionBrokenError(Exception):
    """A session went off the rails; the message says how."""


class Customers:
    def __init__(
        self,
        vmc: VmcMaster,
        rng: random.Random,
        *,
        poll_period: float = 0.025,
        init: Callable[[], Awaitable[object]] | None = None,
        menu: Mapping[int, int] | None = None,
    ) -> None:
        self.vmc = vmc
        self.rng = rng
        self.poll_period = poll_period
        self.init = init or vmc.initialise
        self.menu = dict(menu or {})

    def pick(self, item: int | None = None) -> tuple[int, int]:
        """An item and its bus price: from the menu (item -> price in minor units) when the
        machine has one, so its sales match a planogram; else any item at any price."""
        if self.menu:
            item = self.rng.choice(sorted(self.menu)) if item is None else item
            minor = self.menu.get(item) or self.rng.choice(PRICES_MINOR)
            return item, self.vmc.money(minor)
        price = self.vmc.money(self.rng.choice(PRICES_MINOR))
        return (self.rng.randrange(1, 60) if item is None else item), price

    @property
    def always_idle(self) -> bool:
        return bool(self.vmc.info.features & c.Feature.ALWAYS_IDLE)

    async def run(self, customer: str, number: int) -> SessionResult:
        play = getattr(self, f"_{customer}")
        try:
            outcome = await play()
        except SessionBrokenError as exc:
            await self._recover()
            return SessionResult(number, customer, "error", ok=False, detail=str(exc))
        return SessionResult(number, customer, outcome, ok=True)

    async def _recover(self) -> None:
        """After a broken session, start over as a VMC would: re-initialise the reader."""
        try:
            await self.init()
        except Exception:
            await asyncio.sleep(0.2)

    # --- building blocks ----------------------------------------------------------------

    async def poll_for(self, wanted: set[int], timeout: float) -> Answer:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            answer = await self.vmc.poll()
            if answer.code in wanted:
                return answer
            if answer.code == c.Resp.SESSION_CANCEL_REQUEST and c.Resp.BEGIN_SESSION not in wanted:
                return answer
            await asyncio.sleep(self.poll_period)
        raise SessionBrokenError(
            f"no {sorted(c.response_name(w) for w in wanted)} within {timeout} s"
        )

    async def idle(self) -> None:
        """One poll between customers, answering what a reader may ask for then."""
        answer = await self.vmc.poll()
        if answer.code == c.Resp.SESSION_CANCEL_REQUEST:
            await self.end_session()
        await asyncio.sleep(self.poll_period)

    async def open_session(self) -> None:
        if self.always_idle:
            return
        await self.session_shown()

    async def session_shown(self) -> None:
        """Until the reader's BEGIN SESSION: what a customer waits for on the display."""
        await self.poll_for({c.Resp.BEGIN_SESSION}, 3.0)

    async def end_session(self) -> None:
        answer = await self.vmc.session_complete()
        if answer.code != c.Resp.END_SESSION and not answer.is_ack:
            raise SessionBrokenError(f"SESSION COMPLETE answered {answer.words}")
        if answer.is_ack:
            await self.poll_for({c.Resp.END_SESSION}, 1.0)

    async def select(
        self, *, vend: bool = True, succeed: bool = True, item: int | None = None
    ) -> str:
        """One selection: of ``item``, or of a random item number when None."""
        item, price = self.pick(item)
        answer = await self.vmc.vend_request(price, item)
        if not answer.is_ack:
            raise SessionBrokenError(f"VEND REQUEST answered {answer.words}")
        timeout = float(self.vmc.info.max_response_time)
        answer = await self.poll_for({c.Resp.VEND_APPROVED, c.Resp.VEND_DENIED}, timeout)
        if answer.code == c.Resp.VEND_DENIED:
            return "denied"
        if answer.code != c.Resp.VEND_APPROVED:
            raise SessionBrokenError(f"while waiting for approval got {answer.words}")
        if not vend:
            return "approved"
        if succeed:
            result = await self.vmc.vend_success(item)
        else:
            result = await self.vmc.vend_failure()
        if not result.is_ack:
            raise SessionBrokenError(f"vend result answered {result.words}")
        return "vended" if succeed else "vend_failed"

    # --- customers ----------------------------------------------------------------------

    async def _purchase(self) -> str:
        return await self.purchase()

    async def purchase(self, item: int | None = None) -> str:
        """A cashless purchase of ``item`` (random when None), as the ``purchase`` customer."""
        await self.open_session()
        outcome = await self.select(item=item)
        await self.end_session()
        return outcome

    async def session(self, items: Sequence[int]) -> list[str]:
        """One session with a selection of each item in turn, as a multi-vend VMC asks for
        them; the outcome of each ("vended", "denied", ...)."""
        await self.open_session()
        outcomes = [await self.select(item=item) for item in items]
        await self.end_session()
        return outcomes

    async def _vend_failure(self) -> str:
        await self.open_session()
        outcome = await self.select(succeed=False)
        await self.end_session()
        return outcome

    async def _cancel(self) -> str:
        await self.open_session()
        item, price = self.pick()
        if not (await self.vmc.vend_request(price, item)).is_ack:
            raise SessionBrokenError("VEND REQUEST was not ACKed")
        answer = await self.vmc.vend_cancel()
        if answer.code != c.Resp.VEND_DENIED:
            raise SessionBrokenError(f"VEND CANCEL answered {answer.words}")
        await self.end_session()
        return "cancelled"

    async def _walk_away(self) -> str:
        await self.open_session()
        for _ in range(3):
            await self.vmc.poll()
            await asyncio.sleep(self.poll_period)
        if not self.always_idle:
            await self.end_session()
        return "walked_away"

    async def _cash_sale(self) -> str:
        item, price = self.pick()
        answer = await self.vmc.cash_sale(price, item)
        if not answer.is_ack:
            raise SessionBrokenError(f"CASH SALE answered {answer.words}")
        return "cash_sale"

    async def _multi_vend(self) -> str:
        await self.open_session()
        first = await self.select()
        second = await self.select()
        await self.end_session()
        return "multi_vend" if (first, second) == ("vended", "vended") else f"{first}+{second}"

    async def _vmc_reset(self) -> str:
        """The VMC resets mid-vend: by a RESET command, or by a BREAK on the bus."""
        await self.open_session()
        item, price = self.pick()
        await self.vmc.vend_request(price, item)
        outcome = "reset_recovered"
        if self.rng.random() < 0.5:
            self.vmc.bus_reset()
            await asyncio.sleep(BUS_SETUP_S)
            outcome = "bus_reset_recovered"
        await self.init()
        return outcome


async def run_customers(
    customers: Customers,
    count: int,
    *,
    weights: dict[str, int] | None = None,
    on_result: Callable[[SessionResult], None] | None = None,
) -> Report:
    table = weights or DEFAULT_WEIGHTS
    names = [n for n in CUSTOMERS if table.get(n, 0) > 0]
    report = Report()
    for number in range(1, count + 1):
        name = customers.rng.choices(names, weights=[table[n] for n in names])[0]
        result = await customers.run(name, number)
        report.results.append(result)
        if on_result is not None:
            on_result(result)
        await asyncio.sleep(customers.poll_period)
    return report
