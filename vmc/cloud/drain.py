"""One session's outbox drain: the rows queued to go, the send window, how far it has sent.

The state lives in an object, not in the drain coroutine's locals, so that rows a commit has
just written can go out from that commit's own turn of the event loop (:meth:`offer`)
while the coroutine waits, for a PUBACK or for new rows. A remote vend's ``txn.request``
then reaches the broker without waiting for the drain's task to be scheduled and read the
outbox back. Rows go out in seq order either way: an offer is taken only when its first
row is the very next one after the last sent and nothing read from the outbox still waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from vmc.cloud.puback import PubackTap
from vmc.cloud.window import SendWindow
from vmc.journal import Journal, OutboxRow


class OutboxDrain:
    def __init__(
        self,
        journal: Journal,
        tap: PubackTap,
        window: SendWindow,
        sign: Callable[[bytes], bytes] | None,
        fetch_rows: int,
    ) -> None:
        self.journal = journal
        self.tap = tap
        self.window = window
        self.sign = sign
        self.fetch_rows = fetch_rows
        self.queued: deque[OutboxRow] = deque()
        self.after = 0
        """The last seq sent in this session."""

    def fill(self) -> None:
        """Read the next rows from the outbox, if nothing read before still waits to go."""
        if not self.queued and self.window.room:
            self.queued.extend(self.journal.pending(self.fetch_rows, self.after))

    def send_queued(self) -> None:
        """Publish as many queued rows as the window has room for, in one write."""
        if not (self.queued and self.window.room):
            return
        while self.queued and self.window.room:
            self._publish(self.queued.popleft())
        self.tap.flush()

    def offer(self, rows: Sequence[OutboxRow]) -> bool:
        """Publish ``rows``, just committed, now if they are next in line and all fit;
        False (nothing sent) if not: the drain reads them from the outbox in turn."""
        if not rows or self.queued or len(rows) > self.window.room:
            return False
        if any(row.seq != self.after + i for i, row in enumerate(rows, 1)):
            return False  # not next in line, or another writer's row between them
        for row in rows:
            self._publish(row)
        self.tap.flush()
        return True

    def _publish(self, row: OutboxRow) -> None:
        payload = row.payload if self.sign is None else self.sign(row.payload)
        self.window.sent(row.seq, self.tap.publish(row.topic, payload))
        self.after = row.seq
