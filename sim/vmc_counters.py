"""The simulated VMC's own audit counters: what it sold, as it would report over DEX.

The VMC master updates them from what happens on the MDB bus, so an audit written from them
agrees with the sales the reader saw; the reporter's deltas can then be checked against the
bus, and its reconciliation (PA2 per selection against the paid vends the reader saw) is
silent unless a test sells past the reader with :meth:`SalesCounters.vended` directly. As a
real VMC does, a cashless vend in a session the reader began with payment type test or free
(MDB level 2+) is counted in PA3 / PA4, not in the paid counters. The audit also says what its
coin changer's tubes hold (CA15), which a test sets to play a changer running out of change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocols.evadts.records import Cash, CashIn, CashOut, Product, Sales
from protocols.mdb.commands import PaymentType
from sim.checks import Tally


@dataclass
class SelectionCounters:
    price: int = 0
    cashless_vends: int = 0
    cashless_value: int = 0
    cash_vends: int = 0
    cash_value: int = 0
    test_vends: int = 0
    free_vends: int = 0

    @property
    def vends(self) -> int:
        return self.cashless_vends + self.cash_vends

    @property
    def value(self) -> int:
        return self.cashless_value + self.cash_value


@dataclass
class SalesCounters:
    """Since-initialisation counters, in minor units."""

    selections: dict[int, SelectionCounters] = field(default_factory=dict)
    tube_contents: int | None = 2500
    """The value of the coins in the changer's tubes (CA1501); None: the audit has no CA15."""

    def vended(
        self, item: int, price: int, *, cash: bool, payment: PaymentType = PaymentType.NORMAL
    ) -> None:
        row = self.selections.setdefault(item, SelectionCounters())
        row.price = price
        if payment is PaymentType.TEST:
            row.test_vends += 1
        elif payment is PaymentType.FREE:
            row.free_vends += 1
        elif cash:
            row.cash_vends += 1
            row.cash_value += price
        else:
            row.cashless_vends += 1
            row.cashless_value += price

    @property
    def paid_vends(self) -> int:
        return sum(row.vends for row in self.selections.values())

    @property
    def paid_value(self) -> int:
        return sum(row.value for row in self.selections.values())

    @property
    def paid(self) -> Tally:
        """Every paid vend, cashless and cash: what the audit's paid counters hold."""
        return Tally(self.paid_vends, self.paid_value)

    @property
    def cashless(self) -> Tally:
        rows = self.selections.values()
        return Tally(sum(r.cashless_vends for r in rows), sum(r.cashless_value for r in rows))

    @property
    def cash(self) -> Tally:
        rows = self.selections.values()
        return Tally(sum(r.cash_vends for r in rows), sum(r.cash_value for r in rows))


def audit_from_counters(
    counters: SalesCounters, *, serial: str = "SIMVMC000001", model: str = "vmc-sim"
) -> bytes:
    """The EVA-DTS audit a VMC with these counters would send over DEX.

    The coin mechanism (CA2-CA4) counts the cash sales as paid with the exact money in coins,
    all of them routed to the change tubes: no bills, nothing to the cash box, no change paid.
    """
    from protocols.evadts.writer import make_audit, write

    products = [
        Product(
            selection=str(item),
            price=row.price,
            paid=Sales(row.vends, row.value, row.vends, row.value),
            test=_unpaid(row.test_vends),
            free=_unpaid(row.free_vends),
        )
        for item, row in sorted(counters.selections.items())
    ]
    tubes = counters.tube_contents
    cash = counters.cash
    coins = cash.value
    audit = make_audit(
        serial=serial,
        model=model,
        products=products,
        currency="EUR",
        cash=Cash(
            sales=Sales(cash.vends, coins, cash.vends, coins),
            cash_in=CashIn(coins, 0, coins, 0, coins, 0, coins, 0),
            cash_out=CashOut(0, 0, 0, 0),
            other=() if tubes is None else (("CA15", str(tubes)),),
        ),
    )
    return write(audit)


def _unpaid(vends: int) -> Sales | None:
    """PA3 / PA4: vends without money (absent while there were none, as many VMCs do)."""
    return Sales(vends, 0, vends, 0) if vends else None
