"""What vmcd queued for the cloud and booked locally, as it happens: ``vmctl events``.

The journal tells the feed after each commit (:attr:`vmc.journal.Journal.on_commit`) which
outbox rows it wrote (events for the cloud and command replies) and which local-policy
record (``--local-approval`` without a cloud). The feed keeps the last :data:`KEEP` of them
in memory, since vmcd started (the outbox itself empties on each PUBACK), and hands new ones
to whoever follows. Each item is decoded once and shortened (long texts, long lists), so the
memory it holds is bounded whatever the messages carry (a raw audit, say). Nothing is decoded
while nobody follows: the commits wait, the last :data:`KEEP` of them, until ``vmctl events``
asks (a vend's commits cost the feed an append). With a follower, the decoding waits for the
event loop's next turn: a commit's caller (an approval on its way to the bus, a ``txn.request``
to the outbox) does not wait for it.

A follower that reads too slowly loses the oldest items it has not read and is told how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import cbor2

from vmc.journal import JournalRecord, OutboxRow

KEEP = 256
"""Items kept for ``vmctl events``, and unread items a follower may have."""
MAX_TEXT = 200
MAX_ITEMS = 20
MAX_DEPTH = 6
HEAD = frozenset({"v", "id", "seq", "type", "at"})
"""An event's envelope (cloud-api §2): shown beside its fields, not among them."""


class Kind(Enum):
    EVENT = "event"
    REPLY = "reply"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One thing queued or booked: ``type`` is the event's type, ``reply``, or the local
    book's kind; ``at`` when it was committed (POSIX s); ``seq`` the outbox seq (none for a
    local record)."""

    number: int
    at: float
    kind: Kind
    type: str
    seq: int | None
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "at": self.at,
            "kind": self.kind.value,
            "type": self.type,
            "seq": self.seq,
            "fields": self.fields,
        }


class Follower:
    """New items for one follower, at most :data:`KEEP` unread."""

    def __init__(self) -> None:
        self._items: deque[FeedItem] = deque()
        self._dropped = 0
        self._ready = asyncio.Event()

    def push(self, item: FeedItem) -> None:
        if len(self._items) >= KEEP:
            self._items.popleft()
            self._dropped += 1
        self._items.append(item)
        self._ready.set()

    async def take(self) -> tuple[list[FeedItem], int]:
        """The items that came since the last take (waiting for one), and how many were lost."""
        await self._ready.wait()
        self._ready.clear()
        items, dropped = list(self._items), self._dropped
        self._items.clear()
        self._dropped = 0
        return items, dropped


class EventFeed:
    def __init__(self) -> None:
        self._recent: deque[FeedItem] = deque(maxlen=KEEP)
        self._followers: set[Follower] = set()
        self._numbers = itertools.count(1)
        self._undecoded: deque[tuple[Sequence[OutboxRow], JournalRecord | None, float]] = deque(
            maxlen=KEEP  # each commit holds an item at least: older ones would not be kept
        )

    def committed(self, rows: Sequence[OutboxRow], record: JournalRecord | None, at: float) -> None:
        """One of the journal's :attr:`~vmc.journal.Journal.on_commit`: noted now; decoded
        when asked for, or on the loop's next turn while someone follows (at once without a
        running loop)."""
        self._undecoded.append((rows, record, at))
        if not self._followers:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._decode()
            return
        if len(self._undecoded) == 1:
            loop.call_soon(self._decode)

    def _decode(self) -> None:
        undecoded = list(self._undecoded)
        self._undecoded.clear()
        for rows, record, at in undecoded:
            items = [self._from_row(row, at) for row in rows]
            if record is not None:
                fields = {
                    k: _plain(v) for k, v in dataclasses.asdict(record).items() if k != "kind"
                }
                items.append(
                    FeedItem(next(self._numbers), at, Kind.LOCAL, record.kind, None, fields)
                )
            for item in items:
                self._recent.append(item)
                for follower in self._followers:
                    follower.push(item)

    def _from_row(self, row: OutboxRow, at: float) -> FeedItem:
        try:
            payload = cbor2.loads(row.payload)
        except Exception:  # our own encoding: never, but a feed must not fail a commit
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if "type" in payload:
            kind, name = Kind.EVENT, str(payload["type"])
            fields = {k: v for k, v in payload.items() if k not in HEAD}
        else:
            kind, name = Kind.REPLY, "reply"
            fields = {k: v for k, v in payload.items() if k not in ("v", "at")}
        return FeedItem(next(self._numbers), at, kind, name, row.seq, _short(fields, 0))

    def recent(self, limit: int) -> list[FeedItem]:
        """The last ``limit`` items, oldest first."""
        self._decode()
        if limit <= 0:
            return []
        return list(self._recent)[-limit:]

    @contextlib.contextmanager
    def follow(self) -> Iterator[Follower]:
        self._decode()  # what was committed before is not news to the new follower
        follower = Follower()
        self._followers.add(follower)
        try:
            yield follower
        finally:
            self._followers.discard(follower)


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def _short(value: Any, depth: int) -> Any:
    """``value`` as JSON can carry it, with long texts and lists cut (saying how much)."""
    if isinstance(value, str):
        if len(value) <= MAX_TEXT:
            return value
        return f"{value[:MAX_TEXT]}... ({len(value)} characters)"
    if isinstance(value, bytes | bytearray):
        return f"<{len(value)} bytes>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(value, dict):
        first = itertools.islice(value.items(), MAX_ITEMS)
        shown = {str(k): _short(v, depth + 1) for k, v in first}
        if len(value) > MAX_ITEMS:
            shown["..."] = f"{len(value) - MAX_ITEMS} more"
        return shown
    if isinstance(value, list | tuple):
        items = [_short(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            items.append(f"... {len(value) - MAX_ITEMS} more")
        return items
    return str(value)
