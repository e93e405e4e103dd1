"""The Executive master's settings, apart from the master: vmcd's configuration checks them on
every machine, and an MDB machine has no use for the master itself."""

from __future__ import annotations

from dataclasses import dataclass

MAX_PNAK_RETRIES = 20


@dataclass(frozen=True, slots=True)
class ExeSettings:
    """Everything the public sources leave open, with defaults and why (docs/executive.md).

    Seconds unless named otherwise. ``price_unit`` and prices are minor units.
    """

    reply_timeout: float = 0.1
    """Wait for the one reply byte; unverified (a byte takes about 1 ms at 9600 baud)."""
    poll_interval: float = 0.1
    """Pause between exchanges while idle: continuous polling keeps the VMC from "no link"."""
    pnak_retries: int = 5
    """Resends after a PNAK; 5 as SoftJourn/vending-control does."""
    silent_after: float = 2.0
    """No reply for this long: the VMC is silent, the link is down (unverified)."""
    approval_timeout: float = 10.0
    """From the selection to the approval; keep it under the VMC's own wait after a vend
    request (Vendo's parameter C3, 0-250 s)."""
    vend_timeout: float = 60.0
    """Wait for the VEND reply; "at least 60 seconds" per SoftJourn's note on the spec."""
    status_inhibit_mask: int = 0
    """STATUS reply bits that mean "inhibited"; 0: not read (the sources disagree)."""
    status_free_vend_mask: int = 0
    """STATUS reply bits that mean "free vend"; 0: not read."""
    price_holding: bool = False
    """The CREDIT reply is a price line priced from vmc's table, not a price."""
    price_unit: int = 1
    """Standard Executive: minor units per step of the CREDIT reply byte (unverified)."""

    def __post_init__(self) -> None:
        """Refuse what cannot work; messages start with the field's name."""
        for name in (
            "reply_timeout",
            "poll_interval",
            "silent_after",
            "approval_timeout",
            "vend_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be a positive number of seconds")
        if self.silent_after <= self.reply_timeout:
            raise ValueError("silent_after: must be longer than reply_timeout")
        if not 0 <= self.pnak_retries <= MAX_PNAK_RETRIES:
            raise ValueError(f"pnak_retries: expected 0..{MAX_PNAK_RETRIES}")
        for name in ("status_inhibit_mask", "status_free_vend_mask"):
            if not 0 <= getattr(self, name) <= 0xFF:
                raise ValueError(f"{name}: expected a byte mask 0..255")
        if not 1 <= self.price_unit <= 1_000_000:
            raise ValueError("price_unit: expected 1..1000000 minor units")
