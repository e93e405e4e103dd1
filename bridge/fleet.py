"""What the bridge knows of each machine from its retained ``status`` and ``state``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class MachineView:
    """The seed's VendingMachine fields the contract gives (contract §8)."""

    id: str
    online: bool
    busy: bool
    ready: bool
    """Online, the VMC polling, the reader enabled, nothing open: a lock can be taken."""


@dataclass
class Fleet:
    status: dict[str, str] = field(default_factory=dict)
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    listeners: list[Callable[[str], None]] = field(default_factory=list)
    """Told the machine's id after its status or state changed."""

    def update(self, machine: str, leaf: str, body: object) -> None:
        if not isinstance(body, dict):
            return
        if leaf == "status" and isinstance(body.get("state"), str):
            self.status[machine] = body["state"]
        elif leaf == "state":
            self.state[machine] = body
        else:
            return
        for listener in self.listeners:
            listener(machine)

    def known(self, machine: str) -> bool:
        return machine in self.status or machine in self.state

    def view(self, machine: str) -> MachineView | None:
        if not self.known(machine):
            return None
        online = self.status.get(machine) == "online"
        state = self.state.get(machine, {})
        busy = state.get("txn") is not None or state.get("credit") is not None
        ready = (
            online
            and not busy
            and state.get("mdb_link") == "up"
            and state.get("reader") == "enabled"
        )
        return MachineView(machine, online, busy, ready)
