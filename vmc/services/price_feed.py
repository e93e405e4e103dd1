"""Executive price holding: the planogram's prices, kept in the bus process.

With price holding the VMC sends a price line, not a price, and vmc is the price list: the
planogram's selection ``n`` is price line ``n``. The bus process needs the table to price a
selection the moment the VMC shows it, so this feed sends it (:class:`SetPrices`) whenever a
bus process is ready and whenever the planogram changes (the cloud's ``planogram.set``,
``vmctl planogram set``): a price change from the cloud reaches the machine at its next sale.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from vmc.planogram import Planogram
from vmc.services import bus_messages as msg

log = structlog.get_logger("vmc.price_feed")


class PriceFeed:
    def __init__(
        self,
        planogram: Callable[[], Planogram | None],
        send: Callable[[msg.BusCommand], bool],
    ) -> None:
        self.planogram = planogram
        self.send = send
        self._sent: tuple[tuple[int, int], ...] | None = None  # what the bus process has
        self._live = False  # a bus process said it is ready, and took what was sent since

    def ready(self) -> None:
        """A new bus process: it has no table yet."""
        self._live = True
        self._sent = None
        self.tick()

    def tick(self) -> None:
        """Send the table if it changed since the bus process last got it (or it never did).
        Nothing is tried while no bus process runs: the next one's :meth:`ready` sends it."""
        if not self._live:
            return
        planogram = self.planogram()
        prices = () if planogram is None else tuple(sorted(planogram.prices().items()))
        if prices == self._sent:
            return
        if not self.send(msg.SetPrices(prices)):
            self._live = False
            return
        self._sent = prices
        log.info("exe_prices_sent", lines=len(prices))
