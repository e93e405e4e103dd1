"""The MQTT topic tree of one device: ``{prefix}/{device_id}/{leaf}``."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "vmc"


@dataclass(frozen=True, slots=True)
class Topics:
    device_id: str
    prefix: str = DEFAULT_PREFIX

    def _leaf(self, leaf: str) -> str:
        return f"{self.prefix}/{self.device_id}/{leaf}"

    @property
    def commands(self) -> str:
        """Backend -> device, QoS 1."""
        return self._leaf("cmd")

    @property
    def replies(self) -> str:
        """Device -> backend: one reply per command, QoS 1."""
        return self._leaf("reply")

    @property
    def events(self) -> str:
        """Device -> backend: transactions, sales, in outbox order, QoS 1."""
        return self._leaf("events")

    @property
    def status(self) -> str:
        """Retained online / offline / lost (the last will)."""
        return self._leaf("status")

    @property
    def state(self) -> str:
        """Retained machine state: reader state and the open transaction."""
        return self._leaf("state")
