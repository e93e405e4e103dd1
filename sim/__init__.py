"""vmc's simulator: the VMC, the DEX source, the backend and the broker a reader meets."""

from __future__ import annotations

from protocols.errors import VmcError


class StartError(VmcError):
    """A run could not start: a user's mistake or a missing piece (vmc-sim exits 2)."""
