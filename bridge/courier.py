"""Delivers the queued callbacks to the third parties: at least once, in order per machine.

Each (third party, machine) has one callback in flight at most, its oldest, and an instance
claims it in the store before the call (a lease: instances sharing a store never call the
same callback at once, and a killed instance's claim lapses). A callback is
delivered when the third party answers 2xx; anything else (no connection, a timeout, another
status) is tried again after a backoff of 0.5 s doubling to 60 s, for ``give_up_after``
seconds, after which it is set aside as undeliverable (listed, never dropped silently) and the
machine's next callback goes.

The bookkeeping is grouped: one statement claims every head that is due, and the outcomes of
the calls that ended meanwhile are recorded together, in one commit, before the next claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import structlog

from bridge.config import BridgeConfig, ThirdParty
from bridge.store import Delivery, Outcome, SqlStore

log = structlog.get_logger("bridge.courier")

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0
IDLE_WAIT = 0.5
CALL_TIMEOUT = 10.0
LEASE = 3 * CALL_TIMEOUT
"""How long a claimed callback is this instance's: longer than a call can take; after that
(the instance was killed) another instance takes it."""

AnswerHandler = Callable[[Delivery, dict[str, Any]], Awaitable[None]]


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones (1, 2, ...)."""
    return float(min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, attempts - 1)))


def auth_for(party: ThirdParty) -> tuple[dict[str, str], httpx.BasicAuth | None]:
    headers = {} if party.outbound_api_key is None else {"X-API-Key": party.outbound_api_key}
    basic = None if party.outbound_user is None else httpx.BasicAuth(*party.outbound_user)
    return headers, basic


def idempotency_key(delivery: Delivery) -> str:
    """The same for every try of one callback: the device's event id and the path (one event
    may give two callbacks). The document's bodies carry no id; this header lets a third party
    drop a callback it already booked."""
    return f"{delivery.event_id}{delivery.path}"


class Courier:
    def __init__(
        self,
        config: BridgeConfig,
        store: SqlStore,
        on_answer: AnswerHandler,
        http: Sequence[httpx.AsyncClient],
    ) -> None:
        self.config = config
        self.store = store
        self.on_answer = on_answer
        self.http = http
        """Clients to share the calls out among, a machine's always by the same one."""
        self._wake = asyncio.Event()
        self._flying: dict[tuple[str, str], asyncio.Task[None]] = {}
        """The call in flight per (third party, machine): a slow one holds up no other."""
        self._ended: list[Outcome] = []
        """Outcomes not recorded yet; a machine's next callback is claimed only after its
        predecessor's is."""

    def wake(self) -> None:
        """New callbacks were queued: look now rather than at the next idle tick."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    await self._record_ended()
                    now = time.time()
                    claimed = await self.store.claim_due(self.config.client_id, now, now + LEASE)
                except Exception:  # the store is away: look again in a while
                    log.exception("courier_store_failed", retry_in=IDLE_WAIT)
                    await asyncio.sleep(IDLE_WAIT)
                    continue
                for delivery in claimed:
                    key = (delivery.third_party, delivery.machine)
                    if key not in self._flying:  # else its lease lapses and it is taken again
                        self._flying[key] = asyncio.create_task(self._fly(key, delivery))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_WAIT)
        finally:
            flying = list(self._flying.values())
            for task in flying:
                task.cancel()
            await asyncio.gather(*flying, return_exceptions=True)
            with contextlib.suppress(Exception):  # unrecorded, they are delivered again
                await self._record_ended()

    async def _record_ended(self) -> None:
        ended, self._ended = self._ended, []
        try:
            await self.store.settle(ended)
        except BaseException:
            self._ended[:0] = ended  # written at the next try, still before the next claim
            raise

    async def _fly(self, key: tuple[str, str], delivery: Delivery) -> None:
        try:
            await self._deliver(delivery)
        except Exception:
            log.exception("callback_crashed", path=delivery.path, event_id=delivery.event_id)
        finally:
            del self._flying[key]
            self.wake()  # the machine's next callback may be due now

    async def _deliver(self, delivery: Delivery) -> None:
        party = self.config.third_party(delivery.third_party)
        headers, basic = auth_for(party)
        told = log.bind(
            third_party=party.name,
            machine=delivery.machine,
            path=delivery.path,
            event_id=delivery.event_id,
        )
        error: str
        try:
            client = self.http[hash(delivery.machine) % len(self.http)]
            response = await client.post(
                party.base_url + delivery.path,
                json=delivery.body,
                headers=headers | {"Idempotency-Key": idempotency_key(delivery)},
                auth=basic or httpx.USE_CLIENT_DEFAULT,
                timeout=CALL_TIMEOUT,
            )
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        else:
            if response.is_success:
                self._ended.append(Outcome(delivery.id, time.time()))
                told.info("callback_delivered")
                await self.on_answer(delivery, _json(response))
                return
            error = f"HTTP {response.status_code}"
        self._failed(delivery, error, told)

    def _failed(
        self, delivery: Delivery, error: str, told: structlog.typing.FilteringBoundLogger
    ) -> None:
        now = time.time()
        attempts = delivery.attempts + 1
        if now - delivery.created_at >= self.config.give_up_after:
            self._ended.append(Outcome(delivery.id, now, error))
            told.error("callback_undeliverable", attempts=attempts, error=error)
            return
        wait = backoff(attempts)
        self._ended.append(Outcome(delivery.id, now, error, now + wait))
        told.warning("callback_failed", attempts=attempts, error=error, retry_in=wait)


def _json(response: httpx.Response) -> dict[str, Any]:
    """The third party's CallbackResponse, or {} when the body is not a JSON object."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
