"""The compatibility self-test's glue: facts from the bus and the audit reads, kept and reported.

The rules are :mod:`vmc.profile`'s. Here: every report of the bus process and every committed
audit read is folded into the profile in memory; once no new fact came for :data:`SETTLE_S`
(a VMC's set-up is a burst of commands), :meth:`ProfileService.tick` (the daemon's ticker)
commits it to the journal's ``state`` table, and when a fact or verdict changed, a
``device.profile`` event for the cloud in the same commit. A profile learned before a cloud
was configured is sent once when there is one. The timing figures are measured live and kept
with each commit; they never count as a change.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from vmc.cloud import messages as m
from vmc.cloud.outbox import event_message
from vmc.cloud.topics import Topics
from vmc.journal import Journal
from vmc.profile import (
    DexFacts,
    Profile,
    TimingTracker,
    changed_keys,
    dex_facts,
    from_json,
    observe,
    to_json,
)
from vmc.services import bus_messages as msg

if TYPE_CHECKING:
    from vmc.services.reporter import ReadOutcome

log = structlog.get_logger("vmc.profile")

PROFILE = "device.profile"
"""The journal ``state`` key of the profile as last committed (:func:`vmc.profile.to_json`)."""
REPORTED = "device.profile.reported"
"""Set once a ``device.profile`` was queued for a cloud from this journal."""
SETTLE_S = 2.0
"""A profile is committed once no new fact came for this long."""


class ProfileService:
    def __init__(
        self,
        journal: Journal,
        dex_protocol: str | None,
        *,
        topics: Topics | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_outbox: Callable[[], None] = lambda: None,
    ) -> None:
        """``dex_protocol``: the configured DEX port's (``ucs``, ``ddcmp``), None without one."""
        self.journal = journal
        self.topics = topics
        self.clock = clock
        self.monotonic = monotonic
        self.on_outbox = on_outbox
        stored = journal.state(PROFILE)
        self.saved = Profile() if stored is None else from_json(json.loads(stored))
        dex = self.saved.dex
        if (dex.configured, dex.protocol) != (dex_protocol is not None, dex_protocol):
            # Another DEX set-up than the one the audits were read with: start over.
            dex = DexFacts(configured=dex_protocol is not None, protocol=dex_protocol)
        self.current = dataclasses.replace(self.saved, dex=dex)
        self.timing = TimingTracker()
        self._reported = journal.state(REPORTED) is not None
        self._pending_since: float | None = None if self.current == self.saved else monotonic()

    def attach(self, topics: Topics, on_outbox: Callable[[], None]) -> None:
        """Report to the cloud from now on (the daemon wires this once the sync exists)."""
        self.topics = topics
        self.on_outbox = on_outbox

    def profile(self) -> dict[str, Any]:
        """The profile now, as ``vmctl selftest --json`` shows it (JSON-able)."""
        return to_json(dataclasses.replace(self.current, timing=self.timing.timing()))

    # --- facts ---------------------------------------------------------------------------------

    def handle_bus(self, report: object) -> None:
        """One report of the bus process (the daemon hands it every one)."""
        if isinstance(report, msg.Heartbeat):
            self.timing.heard(report, self.monotonic())
            return
        mdb = observe(self.current.mdb, report)
        if mdb != self.current.mdb:
            self._learned(dataclasses.replace(self.current, mdb=mdb))

    def read_done(self, outcome: ReadOutcome) -> None:
        """A committed audit read (a :class:`~vmc.services.reporter.Reporter` listener)."""
        dex = self.current.dex
        if outcome.valid and outcome.audit is not None and dex.protocol is not None:
            learned = dex_facts(outcome.audit, dex.protocol)
        else:
            learned = dataclasses.replace(dex, last_error=outcome.detail or "not a valid audit")
        if learned != dex:
            self._learned(dataclasses.replace(self.current, dex=learned))

    def _learned(self, profile: Profile) -> None:
        self.current = profile
        self._pending_since = self.monotonic()

    # --- commits ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Commit a settled profile, with a ``device.profile`` when it changed (or when a cloud
        never heard of it)."""
        since = self._pending_since
        unreported = self.topics is not None and not self._reported and self.saved.updated_at
        if since is not None and self.monotonic() - since >= SETTLE_S:
            self._pending_since = None
            self._commit(changed_keys(self.saved, self.current))
        elif unreported and since is None:
            self._commit(changed_keys(Profile(), self.saved))

    def _commit(self, changed: list[str]) -> None:
        at = self.clock()
        profile = dataclasses.replace(self.current, timing=self.timing.timing())
        if changed and profile.facts() != self.saved.facts():
            profile = dataclasses.replace(profile, updated_at=at)
        data = to_json(profile)
        state = {PROFILE: json.dumps(data).encode()}
        messages = []
        topics = self.topics
        if changed and topics is not None:
            event = m.DeviceProfile(
                data["mdb"], data["dex"], data["verdicts"], changed, profile.updated_at
            )
            messages.append(event_message(event, topics.events, at))
            state[REPORTED] = b"1"
        self.journal.commit([], messages, state=state, durable=bool(messages))
        self.saved = self.current = profile
        if messages:
            self._reported = True
            self.on_outbox()
        if changed:
            log.info("device_profile", changed=changed, reported=bool(messages))
