"""What the Executive master reports beside the payment events it shares with MDB.

The session and vend events (a selection, its approval on the bus, the vend's result) are the
cashless core's own (:mod:`protocols.mdb.events`), so the transaction engine serves both buses
unchanged. These are the link's own facts, for the log and a technician.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True, slots=True)
class LinkChanged:
    """The VMC answers again (``up``), or has not answered for ``exe.silent_after`` seconds."""

    up: bool


@dataclass(frozen=True, slots=True)
class VmcStatus:
    """The VMC's STATUS reply changed: the raw byte and what the configured masks read in it."""

    raw: int
    inhibited: bool
    free_vend: bool


class Fault(Enum):
    PNAK = "pnak"
    """The VMC answered PNAK to every try of a command (``exe.pnak_retries`` resends)."""
    STALE_REQUEST = "stale_request"
    """A selection was already waiting when the link (re)started: not served, since it may be
    one vmc approved before a restart; the customer selects again once the VMC drops it."""
    UNPRICED = "unpriced"
    """Price holding: a price line the planogram has no price for; not served."""
    NOT_ENABLED = "not_enabled"
    """A selection while the VMC is inhibited or the link is down; not served."""


@dataclass(frozen=True, slots=True)
class ExeFault:
    """A fault on the link: what, on which command, and the byte or detail."""

    fault: Fault
    command: str
    detail: str
