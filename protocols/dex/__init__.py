"""DEX: reading EVA-DTS audits from a vending machine controller (EVA-DTS 6.2 ch. 3 and 4).

Two link protocols carry the same report text: DEX/UCS (:mod:`protocols.dex.ucs`) and
Enhanced DDCMP. Both fail with a :class:`DexError` that names the step where the read broke,
so a log line says how far the machine got (handshake, which block) as well as why.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import ProtocolError


class DexError(ProtocolError):
    """A DEX read failed; ``step`` says where (e.g. "data block 7"), ``reason`` why."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class DexTimeoutError(DexError, TimeoutError):
    """A DEX read failed because the peer went quiet (a protocol timer expired)."""


# --- actions both readers (and both simulated sources) return ------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to put on the line now."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Progress:
    """Audit bytes received so far (after each accepted block)."""

    received: int


@dataclass(frozen=True, slots=True)
class Finished:
    """The read is complete (reader: the audit; source: the audit it served)."""

    audit: bytes


__all__ = ["DexError", "DexTimeoutError", "Finished", "Progress", "Send"]
