"""The demo third party's books (sim/third_party.py): what it charges under each policy."""

from __future__ import annotations

from sim.backend import Policy
from sim.third_party import AppBooks


def test_bridge_demo_post_billing_charges_on_the_vend() -> None:
    books = AppBooks(Policy.POST_BILLING, {"alice": 300, "bob": 100})
    sold, failed = books.open("o1", "alice"), books.open("o2", "alice")
    poor = books.open("o3", "bob")
    assert books.request(sold, 150) is None
    assert books.balances["alice"] == 300  # nothing taken at the request
    books.vend(sold, True)
    assert books.request(failed, 150) is None
    books.vend(failed, False)
    assert books.request(poor, 150) == "insufficient balance"
    books.unlock(poor, "insufficient balance")
    assert (sold.charged, failed.charged, poor.charged) == (150, 0, 0)
    assert books.balances == {"alice": 150, "bob": 100}
    assert [o.outcome for o in (sold, failed, poor)] == [
        "vended",
        "vend failed",
        "unlocked (insufficient balance)",
    ]


def test_bridge_demo_reference_payment_gives_back_what_was_not_dispensed() -> None:
    books = AppBooks(Policy.REFERENCE_PAYMENT, {"dan": 500})
    sold, failed, cancelled = (books.open(ref, "dan") for ref in ("o1", "o2", "o3"))
    for order in (sold, failed, cancelled):
        assert books.request(order, 120) is None
    assert books.balances["dan"] == 140  # taken at each request
    books.vend(sold, True)
    books.vend(failed, False)
    books.unlock(cancelled, "cancelled_by_vmc")
    assert books.charged() == 120
    assert books.balances["dan"] == 380


def test_bridge_demo_deny_all_refuses_every_selection() -> None:
    books = AppBooks(Policy.DENY_ALL, {"alice": 5000})
    assert books.request(books.open("o1", "alice"), 100) == "denied by policy"
    assert books.charged() == 0
