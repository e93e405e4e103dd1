"""Shared events: each instance leases its own events session, and adopts a silent one's.

In shared mode the broker deals the machines' events round-robin to the instances' persistent
sessions, and Mosquitto keeps dealing to a session whose client is gone (measured, see
docs/bridge.md §7): a killed instance's share would wait for its return. So every instance
renews a lease on its client id in the database, and connects its events session only while
it holds it. An instance that finds another's lease lapsed takes it (one row, atomically: one
adopter), connects as that client id, leaves the group at once (the broker stops dealing to
the session and still sends what it had queued), commits and acknowledges every queued event,
ends the session for good (a clean connect) and deletes the lease. A returning owner waits
for that before it connects again: the two never kick each other off the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from bridge.config import BridgeConfig, EventsMode
from bridge.link import EventsHandler, events_filter, mqtt_client
from bridge.store import SqlStore

log = structlog.get_logger("bridge.adopt")

RENEWALS = 5
"""Renewals per lease: a lease of 15 s is renewed every 3 s."""


class Members:
    """This instance's lease, and the adoption of the others' lapsed ones."""

    def __init__(self, config: BridgeConfig, store: SqlStore, on_events: EventsHandler) -> None:
        self.config = config
        self.store = store
        self.on_events = on_events
        self.every = config.member_lease / RENEWALS
        self._adopting: dict[str, asyncio.Task[None]] = {}
        self._own = True

    async def _hold(self, client_id: str) -> bool:
        now = time.time()
        held = await self.store.hold(
            client_id, self.config.client_id, now + self.config.member_lease, now
        )
        if client_id == self.config.client_id and held != self._own:
            self._own = held  # told once per change, not every few seconds
            if held:
                log.info("member_session_own")
            else:
                log.warning("member_session_held_elsewhere")
        return held

    async def own(self) -> None:
        """Until this instance holds the lease on its own session: the events connection's
        gate, checked before every connect (an adopter may be draining the session)."""
        while not await self._hold(self.config.client_id):
            await asyncio.sleep(self.every)

    async def run(self) -> None:
        """Every ``member_lease`` / 5 seconds: renew the leases held, adopt lapsed ones."""
        try:
            while True:
                try:
                    await self._tick()
                except Exception:  # the database is away: try again at the next tick
                    log.exception("member_lease_failed")
                await asyncio.sleep(self.every)
        finally:
            adopting = list(self._adopting.values())
            for task in adopting:
                task.cancel()
            await asyncio.gather(*adopting, return_exceptions=True)

    async def _tick(self) -> None:
        await self._hold(self.config.client_id)
        for client_id, task in list(self._adopting.items()):
            if not await self._hold(client_id):  # this instance stalled past its lease
                task.cancel()
        for client_id in await self.store.lapsed(time.time()):
            if client_id == self.config.client_id or client_id in self._adopting:
                continue
            if await self._hold(client_id):
                adoption = self._adopt(client_id)
                self._adopting[client_id] = asyncio.create_task(adoption, name=client_id)

    async def _adopt(self, client_id: str) -> None:
        told = log.bind(member=client_id)
        told.warning("member_adopting")
        try:
            events = await self._drain(client_id)
            # A clean connect ends the session: the broker deals it nothing more.
            async with mqtt_client(self.config, client_id, persistent=False):
                pass
            with contextlib.suppress(Exception):  # else it lapses, and is adopted (empty) again
                await self.store.release(client_id, self.config.client_id)
            told.info("member_adopted", events=events)
        except Exception:
            # The lease lapses in its time, and the session is adopted again.
            told.exception("member_adoption_failed")
        finally:
            self._adopting.pop(client_id, None)

    async def _drain(self, client_id: str) -> int:
        """Commit and acknowledge what the broker holds for ``client_id``'s session; the
        number of events. Each pass ends with a round trip to the broker (an UNSUBSCRIBE):
        it answers after sending what the acknowledgements before it let go of, so an empty
        queue after it is an empty session."""
        events = 0
        async with mqtt_client(self.config, client_id, persistent=True) as client:
            messages = aiter(client.messages)
            while True:
                for mode in EventsMode:  # out of the group (the first pass), whatever mode
                    await client.unsubscribe(events_filter(self.config, mode))
                if not len(client.messages):
                    return events
                batch = [await anext(messages) for _ in range(len(client.messages))]
                await self.on_events(
                    [
                        (str(m.topic).split("/")[1], bytes(m.payload))
                        for m in batch
                        if isinstance(m.payload, bytes | bytearray)
                    ]
                )
                for message in batch:  # once committed, all together
                    client._client.ack(message.mid, message.qos)
                events += len(batch)
