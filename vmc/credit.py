"""Vouchers (seed 002) and remote credits (seed 004 ``remote_credit``): sessions the machine
pays for itself, within a value the backend set (sans-I/O: data and rules, no clock, no I/O).

A voucher or a credit opens an MDB session whose funds are its value; the machine approves a
selection by itself, for the VMC's price, when the price fits in what is left (``rest``) and,
for a voucher, the selection is one of its set. A voucher pays for one vend; a credit for as
many as its value covers while the session lasts (a multi-vend VMC asks again in the same
session). ``used`` is the approved price of every vend that was dispensed, may have been
(outcome unknown) or is being dispensed: it is reserved before the approval reaches the bus
and given back only when the VMC reports that nothing was dispensed. So ``used`` never exceeds
``value``, and never misses a product that may have left the machine.

An **offline approval** (``vmctl present REF`` while the cloud is unreachable,
:mod:`vmc.offline`) is one more: a session worth what the allow-list and the bounds leave for
the reference, for one vend, like a voucher; it has no outcome event of its own, its vend's
``txn.vend`` (``offline: true``) is the report.

A **test vend** (``vmctl test-vend``) is the same kind of session, asked for on the machine
itself: the VMC is told it is test media (BEGIN SESSION's payment type, MDB level 2+), and the
machine approves one selection, once, at 0; its vend has vend type ``test``. It ends after that
vend whatever its result (a technician wants the one answer), and no cloud outcome event is
sent for it: its vend's ``txn.vend`` says what happened, the asker hears the rest
(:class:`TestVendOutcome`).

The transaction engine (:mod:`vmc.transaction`) drives these sessions; it journals every change
of a :class:`CreditSession` before its bus side effect, like a transaction's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from vmc.cloud import messages as m


class CreditKind(StrEnum):
    VOUCHER = "voucher"
    CREDIT = "credit"
    TEST_VEND = "test_vend"
    OFFLINE = "offline"


class CreditState(StrEnum):
    """``open`` until the one outcome: a voucher ends ``used``, ``expired`` or ``cancelled``;
    a credit ``ended`` (its reason says why, its ``rest`` what is left)."""

    OPEN = "open"
    USED = "used"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    ENDED = "ended"


class Refusal(StrEnum):
    """Why a selection in a voucher's or credit's session is denied (the session stays open)."""

    NOT_IN_VOUCHER = "not_in_voucher"
    OVER_VALUE = "over_value"
    NEGATIVE_VEND = "negative_vend"


@dataclass(frozen=True, slots=True)
class CreditSession:
    """One voucher or credit as journaled; ``credit_id`` is the backend's voucher or credit id."""

    kind: CreditKind
    credit_id: str
    state: CreditState
    value: int
    created_at: float
    updated_at: float
    expires_at: float
    selections: tuple[int, ...] | None = None
    ref: str | None = None
    medium: m.PaymentMedium | None = None
    surcharge: int = 0
    used: int = 0
    txn_ids: tuple[str, ...] = ()
    reason: str = ""
    result: Mapping[str, object] = field(default_factory=dict)
    """The accepting reply's result: the answer to the same id sent again."""
    list_version: int | None = None
    """An offline session's: the allow-list it was approved under (:mod:`vmc.offline`)."""

    @property
    def rest(self) -> int:
        return self.value - self.used

    @property
    def spent(self) -> bool:
        """Nothing more to pay for: a voucher, test vend or offline approval that had its vend,
        a credit with nothing left."""
        return self.rest <= 0 if self.kind is CreditKind.CREDIT else bool(self.txn_ids)

    def amount_for(self, price: int) -> int:
        """What the machine approves for a selection at ``price``: the price, or 0 for a test
        vend (nobody pays it)."""
        return 0 if self.kind is CreditKind.TEST_VEND else price


def why_refused(
    session: CreditSession, selection: int, price: int, *, negative: bool
) -> Refusal | None:
    """Why this selection may not be paid from ``session``; None when it may, for ``price``."""
    if negative:
        return Refusal.NEGATIVE_VEND
    if session.selections is not None and selection not in session.selections:
        return Refusal.NOT_IN_VOUCHER
    if session.amount_for(price) > session.rest or session.spent:
        return Refusal.OVER_VALUE
    return None


class PriceError(ValueError):
    """A voucher without a value whose price the planogram cannot give."""

    def __init__(self, code: m.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def planogram_value(selections: tuple[int, ...] | None, prices: Mapping[int, int] | None) -> int:
    """Seed 002's voucher value when none is given: the planogram price of its one selection,
    or the highest price of its set (every selection of the planogram when it names none)."""
    if not prices:
        raise PriceError(m.ErrorCode.NO_PLANOGRAM, "value: no planogram gives the price")
    wanted = sorted(prices) if selections is None else selections
    missing = [n for n in wanted if n not in prices]
    if missing:
        raise PriceError(
            m.ErrorCode.UNKNOWN_KEY, f"selections: {missing[0]} has no price in the planogram"
        )
    return max(prices[n] for n in wanted)


def outcome(session: CreditSession, reason: str) -> CreditState:
    """The state a session ends in, for ``reason``."""
    if session.kind is CreditKind.CREDIT:
        return CreditState.ENDED
    if session.txn_ids:
        return CreditState.USED
    return CreditState.EXPIRED if reason == "timeout" else CreditState.CANCELLED


class TestVendResult(StrEnum):
    """How a test vend ended, for the technician who asked."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    VENDED = "vended"  # the VMC reported the product delivered (VEND SUCCESS)
    FAILED = "failed"  # VEND FAILURE: nothing was dispensed
    UNKNOWN = "unknown"  # approved, but no result came: it may have dispensed
    NOT_SELECTED = "not_selected"  # its time passed without the selection being made
    CANCELLED = "cancelled"  # the session ended first (the VMC, a reset, a restart, abandoned)
    REFUSED = "refused"  # it did not start: busy, or the reader not enabled


@dataclass(frozen=True, slots=True)
class TestVendOutcome:
    """What a test vend did. ``reason``: why it ended as it did (the refusal's message, the
    session's reason, or the vend's detail); ``code``: a refusal's error code (``busy``,
    ``reader_unavailable``); ``txn_id``: its vend's transaction; ``vended``: the item the VMC
    reported in VEND SUCCESS; ``other_selections``: what the VMC asked for instead (denied: a
    VMC numbering its selections unlike their labels shows here)."""

    __test__: ClassVar[bool] = False

    result: TestVendResult
    selection: int
    reason: str = ""
    code: str | None = None
    txn_id: str | None = None
    vended: int | None = None
    other_selections: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.result is TestVendResult.VENDED

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "result": self.result.value,
            "selection": self.selection,
            "reason": self.reason,
            "code": self.code,
            "txn_id": self.txn_id,
            "vended": self.vended,
            "other_selections": list(self.other_selections),
        }


_SAYS = {
    TestVendResult.VENDED: "vended",
    TestVendResult.FAILED: "FAILED: the VMC reported a vend failure, nothing was dispensed",
    TestVendResult.UNKNOWN: "UNKNOWN: approved, but no result came; it may have dispensed",
    TestVendResult.NOT_SELECTED: "not selected in time",
    TestVendResult.CANCELLED: "cancelled before a selection",
    TestVendResult.REFUSED: "refused",
}


def format_test_vend(data: Mapping[str, object]) -> str:
    """A test vend's outcome (as :meth:`TestVendOutcome.to_json` gives it) for a technician."""
    result = TestVendResult(str(data["result"]))
    line = f"Test vend of selection {data['selection']}: {_SAYS[result]}"
    reason, code = data.get("reason"), data.get("code")
    if result is TestVendResult.REFUSED:
        line += f" ({code}): {reason}"
    elif result is TestVendResult.VENDED and data.get("vended") != data["selection"]:
        line += f" (the VMC reported selection {data.get('vended')})"
    elif result is not TestVendResult.VENDED and reason:
        line += f" ({reason})"
    lines = [line]
    if data.get("txn_id"):
        lines.append(f"  transaction {data['txn_id']}, journaled as vend type test")
    others = data.get("other_selections")
    if isinstance(others, list) and others:
        asked = ", ".join(str(n) for n in others)
        lines.append(
            f"  the VMC asked for {asked} instead (denied): does it number its selections"
            " differently from their labels?"
        )
    return "\n".join(lines)


_ENDED_BY_ITS_VEND = {
    "vended": TestVendResult.VENDED,
    "vend_failed": TestVendResult.FAILED,
    "vend_unknown": TestVendResult.UNKNOWN,
}


def ended_test_vend(
    session: CreditSession, vend: m.TxnVend | None, other_selections: tuple[int, ...] = ()
) -> TestVendOutcome:
    """The outcome of an ended test vend session, with the ``txn.vend`` of its vend if any."""
    assert session.kind is CreditKind.TEST_VEND
    assert session.selections
    result = _ENDED_BY_ITS_VEND.get(session.reason)
    if result is None:
        result = (
            TestVendResult.NOT_SELECTED if session.reason == "timeout" else TestVendResult.CANCELLED
        )
    return TestVendOutcome(
        result,
        session.selections[0],
        (vend.detail if vend is not None else "") or session.reason,
        txn_id=session.txn_ids[0] if session.txn_ids else None,
        vended=vend.selection if vend is not None and vend.result == "success" else None,
        other_selections=other_selections,
    )


def credit_state(session: CreditSession) -> dict[str, object]:
    """The open voucher or credit as the retained ``state`` shows it."""
    return {
        "kind": session.kind.value,
        "id": session.credit_id,
        "value": session.value,
        "used": session.used,
        "rest": session.rest,
        "expires": session.expires_at,
    }


def to_json(session: CreditSession) -> str:
    return json.dumps(dataclasses.asdict(session), default=str)


def from_json(text: str) -> CreditSession:
    data = json.loads(text)
    data["kind"] = CreditKind(data["kind"])
    data["state"] = CreditState(data["state"])
    data["medium"] = None if data["medium"] is None else m.PaymentMedium(data["medium"])
    data["selections"] = None if data["selections"] is None else tuple(data["selections"])
    data["txn_ids"] = tuple(data["txn_ids"])
    return CreditSession(**data)
