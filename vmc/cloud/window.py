"""The outbox's send window: what is in flight, and how far the outbox is acknowledged.

Sans-I/O. The drain says what it published (the row's seq and the packet id it went out
under) and which PUBACKs came back; the window says how many more may go out now and the seq
up to which every row sent has been acknowledged: rows up to there may be deleted, nothing
after. QoS 1 on one session is acknowledged in order, but a PUBACK out of order only holds
the deletion back, it never lets an unacknowledged row go.
"""

from __future__ import annotations

from collections import deque


class SendWindow:
    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a send window holds at least one message, not {size}")
        self.size = size
        self._seq_of: dict[int, int] = {}
        """Packet id -> seq of each message awaiting its PUBACK."""
        self._sent: deque[int] = deque()
        """Seqs sent and not yet released, oldest first."""
        self._acked: set[int] = set()
        """Seqs acknowledged but behind one that is not."""
        self.acked_through = 0
        """Every row sent with a seq up to this one has its PUBACK (0: none yet)."""

    @property
    def in_flight(self) -> int:
        return len(self._seq_of)

    @property
    def room(self) -> int:
        return self.size - len(self._seq_of)

    def sent(self, seq: int, mid: int) -> None:
        """Row ``seq`` went out as packet ``mid``; seqs must grow."""
        if self._sent and seq <= self._sent[-1]:
            raise ValueError(f"seq {seq} sent after {self._sent[-1]}")
        if mid in self._seq_of:
            raise ValueError(f"packet id {mid} is already in flight")
        self._seq_of[mid] = seq
        self._sent.append(seq)

    def acked(self, mid: int) -> bool:
        """A PUBACK for ``mid``; False if that packet is not one of ours."""
        seq = self._seq_of.pop(mid, None)
        if seq is None:
            return False
        self._acked.add(seq)
        return True

    def release(self) -> int:
        """Move :attr:`acked_through` over the acknowledged head; how many rows it passed."""
        sent, acked = self._sent, self._acked
        passed = 0
        while sent and sent[0] in acked:
            seq = sent.popleft()
            acked.remove(seq)
            self.acked_through = seq
            passed += 1
        return passed
