"""The cloud demo's remote operations (issue 9's seed operations), after its customers.

A voucher for one item at its planogram price (the customer first picks another item, which
the machine refuses by itself, then the voucher's), a remote credit spent on two selections in
one multi-vend session (the rest reported for the backend to return), a refund of the first app
vend, and a data request whose DEX read closes the run: its progress, its result, and the
audit delta the closing checks compare with what the VMC counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim import checks
from sim.backend import Books, SimBackend
from sim.checks import Tally
from sim.scenarios import Customers

DEVICE = "demo-1"
VOUCHER_ID = "demo-voucher-1"
VOUCHER_ITEM, OTHER_ITEM = 2, 1
CREDIT_ID = "demo-credit-1"
CREDIT_AMOUNT = 300
CREDIT_ITEMS = (3, 3)
DATA_WAIT_S = 30.0
WIDTH = 13


@dataclass(frozen=True, slots=True)
class RemoteOutcome:
    """What the remote operations left for the closing checks."""

    audit: Tally | None
    """The paid sales of the closing read's audit delta; None when no delta came."""
    refunded: int
    """What the backend refunded, minor units."""


async def remote_operations(
    backend: SimBackend, customers: Customers, decimals: int
) -> RemoteOutcome:
    """Run the four operations, printing one line each; the closing read's delta."""
    money = _money(decimals)
    print("--- remote operations ---")
    reply = await backend.voucher(DEVICE, VOUCHER_ID, selections=[VOUCHER_ITEM])
    if reply["ok"]:
        await customers.session_shown()
        tried = await customers.session([OTHER_ITEM, VOUCHER_ITEM])
        entry = await backend.wait_credit("voucher", VOUCHER_ID)
        status = entry.status or {}
        print(
            f"{'voucher':>{WIDTH}}: item {VOUCHER_ITEM} at its planogram price"
            f" {money(reply['result']['value'])}; the customer tried item {OTHER_ITEM}:"
            f" {tried[0]}, item {VOUCHER_ITEM}: {tried[1]}; {status.get('state')},"
            f" charged {money(int(status.get('charged', 0)))}"
        )
    else:
        print(f"{'voucher':>{WIDTH}}: refused, {reply['code']}: {reply['message']}")
    reply = await backend.credit(DEVICE, CREDIT_ID, CREDIT_AMOUNT, medium="app")
    if reply["ok"]:
        await customers.session_shown()
        tried = await customers.session(list(CREDIT_ITEMS))
        entry = await backend.wait_credit("credit", CREDIT_ID)
        status = entry.status or {}
        print(
            f"{'credit':>{WIDTH}}: {money(CREDIT_AMOUNT)} for any item, one session:"
            f" {', '.join(f'item {n} {o}' for n, o in zip(CREDIT_ITEMS, tried, strict=True))};"
            f" used {money(int(status.get('used', 0)))}, rest {money(int(status.get('rest', 0)))}"
            " to return"
        )
    else:
        print(f"{'credit':>{WIDTH}}: refused, {reply['code']}: {reply['message']}")
    refunded = await _refund_first_app_vend(backend, money)
    audit = await _closing_read(backend)
    return RemoteOutcome(audit, refunded)


async def _refund_first_app_vend(backend: SimBackend, money: Any) -> int:
    vended = [e for e in backend.books.entries.values() if e.result == "success" and e.paid]
    if not vended:
        print(f"{'refund':>{WIDTH}}: no paid app vend to refund")
        return 0
    first = vended[0]
    reply = await backend.refund(DEVICE, first.txn_id, reason="demo: product damaged")
    amount = int(reply["result"]["amount"])
    print(
        f"{'refund':>{WIDTH}}: {money(amount)} of {first.member or 'walk-up'}'s first vend,"
        f" recorded by the machine (refunded {money(int(reply['result']['refunded']))}"
        f" of {money(int(reply['result']['charged']))})"
    )
    return amount


async def _closing_read(backend: SimBackend) -> Tally | None:
    """A data request for a report: the DEX read's progress, its result, its delta."""
    try:
        answer = await backend.data_request(DEVICE, report=True, timeout=DATA_WAIT_S)
    except TimeoutError:
        print(f"{'data request':>{WIDTH}}: no result within {DATA_WAIT_S:g} s")
        return None
    result = answer.result
    if result is None:
        reply = answer.reply
        print(f"{'data request':>{WIDTH}}: refused, {reply['code']}: {reply['message']}")
        return None
    received = max((int(p["received"]) for p in answer.progress), default=0)
    verdict = "ok" if result["ok"] else f"failed: {result.get('error')}"
    print(
        f"{'data request':>{WIDTH}}: a DEX read now, {len(answer.progress)} progress"
        f" event(s) up to {received} bytes, result {verdict} (read {result['read_id']})"
    )
    deltas = [
        e
        for e in backend.event_log
        if e["type"] == "audit.delta" and e["read_id"] == result["read_id"]
    ]
    if not deltas:
        return None
    change = deltas[0]["delta"]
    return Tally(int(change["paid"]["vends"]), int(change["paid"]["value"]))


def credit_check(books: Books) -> checks.Check:
    """Each voucher's and credit's outcome, as the machine reported it, against the backend's
    own count of the vends it paid."""
    entries = list(books.credits.values())
    broken = [f"{e.kind} {e.credit_id}" for e in entries if not e.agrees()]
    return checks.problems("vouchers and credits", broken, len(entries), "disagree with vmcd")


def credit_vends(books: Books) -> list[dict[str, Any]]:
    """The successful vends vouchers and credits paid (``txn.vend`` events)."""
    return [v for e in books.credits.values() for v in e.vends if v["result"] == "success"]


def _money(decimals: int) -> Any:
    return lambda amount: checks.money(amount, decimals)
