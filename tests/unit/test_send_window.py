"""The outbox's send window: room, and deletion only up to the first unacknowledged row."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmc.cloud.window import SendWindow


def test_room_shrinks_with_each_send_and_grows_with_each_ack() -> None:
    window = SendWindow(3)
    window.sent(10, 1)
    window.sent(11, 2)
    assert (window.in_flight, window.room) == (2, 1)
    assert window.acked(1)
    assert (window.in_flight, window.room) == (1, 2)


def test_in_order_acks_release_up_to_the_last() -> None:
    window = SendWindow(4)
    for mid, seq in enumerate((3, 5, 9), start=1):  # seqs skip numbers, as outbox seqs do
        window.sent(seq, mid)
    window.acked(1)
    window.acked(2)
    assert window.release() == 2
    assert window.acked_through == 5
    window.acked(3)
    assert window.release() == 1
    assert window.acked_through == 9


def test_an_ack_out_of_order_holds_the_release_back_until_the_gap_is_acked() -> None:
    window = SendWindow(4)
    for mid, seq in enumerate((1, 2, 3), start=1):
        window.sent(seq, mid)
    window.acked(3)
    window.acked(2)
    assert window.release() == 0
    assert window.acked_through == 0  # row 1 has no PUBACK: nothing may be deleted
    window.acked(1)
    assert window.release() == 3
    assert window.acked_through == 3


def test_an_unknown_or_repeated_packet_id_is_not_ours() -> None:
    window = SendWindow(2)
    window.sent(1, 7)
    assert not window.acked(8)
    assert window.acked(7)
    assert not window.acked(7)
    assert window.release() == 1


def test_a_packet_id_in_flight_twice_or_a_seq_going_back_is_a_bug() -> None:
    window = SendWindow(4)
    window.sent(5, 1)
    with pytest.raises(ValueError, match="already in flight"):
        window.sent(6, 1)
    with pytest.raises(ValueError, match="after 5"):
        window.sent(5, 2)
    with pytest.raises(ValueError, match="at least one"):
        SendWindow(0)


@given(st.permutations(list(range(1, 21))))
def test_whatever_the_ack_order_acked_through_is_the_longest_fully_acked_prefix(
    order: list[int],
) -> None:
    window = SendWindow(20)
    for seq in range(1, 21):
        window.sent(seq * 2, seq)  # packet id = index, seq = 2 x index
    acked: set[int] = set()
    released = 0
    for mid in order:
        window.acked(mid)
        acked.add(mid)
        released += window.release()
        prefix = 0
        while prefix + 1 in acked:
            prefix += 1
        assert window.acked_through == prefix * 2
        assert released == prefix
    assert window.in_flight == 0
