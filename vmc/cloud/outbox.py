"""Turning contract events into outbox rows: a fresh id, and the row's seq inside the payload."""

from __future__ import annotations

import uuid

from vmc.cloud import codec
from vmc.cloud import messages as m
from vmc.journal import NewMessage


def new_id() -> str:
    return uuid.uuid4().hex


def event_message(event: m.Event, topic: str, at: float) -> NewMessage:
    event_id = new_id()

    def encode(seq: int) -> bytes:
        return codec.encode_event(event, event_id=event_id, seq=seq, at=at)

    return NewMessage(event_id, topic, encode)


def reply_message(reply: m.Reply, topic: str, at: float) -> tuple[NewMessage, bytes]:
    """A command's reply as an outbox row, and its bytes for the command table."""
    payload = codec.encode_reply(reply, at=at)
    return NewMessage(new_id(), topic, lambda _seq: payload), payload
