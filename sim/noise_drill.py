"""The bus-noise drill: vmcd sells through a noisy line, then the line goes quiet.

The real daemon runs on the device end of a :class:`sim.noise.NoiseRelay`; the simulated VMC
plays customers (purchases, failures, cancels, cash sales, resets mid-vend) while the relay
flips bits and drops words. Then the noise stops and the drill counts the polls until the
reader answers a clean POLL correctly, and plays one clean purchase to show it still sells.

What it judges, from both ends of the line:

* false approvals: a VEND APPROVED the VMC took that it was not waiting for (no request open,
  or one a RESET or BREAK aborted), any approval the VMC saw under the ``deny`` policy, and
  on the reader's side any vend approved twice or approved under ``deny`` (its log); and the
  VMC may not take more approvals than vmcd sent (one forged by noise that passed the CHK);
* dispensed without approval: a sale the reader journaled for a vend it never approved;
* crashes: the bus process exiting, a traceback in the log, a non-zero exit at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocols.errors import VmcError
from protocols.mdb import commands as c
from sim.daemon_proc import DaemonProcess
from sim.noise import NoiseCounts, NoiseRelay, NoiseSpec
from sim.scenarios import CUSTOMERS, DEFAULT_WEIGHTS, Customers
from sim.vmc_master import Answer, VmcMaster, VmcSimError
from vmc.journal import Journal

ANSWER_TIMEOUT_S = 0.1  # the relay adds a hop; silence is still told from an answer at once
POLL_PERIOD_S = 0.005
MAX_RECOVERY_POLLS = 50
COMMAND_TRIES = 30  # a VMC repeats a command until the non-response time (seconds)
READER_WAIT_S = 20.0


class WatchedVmc(VmcMaster):
    """A VMC that keeps the books the drill is judged by: approvals expected and not, and the
    reader's answers whose CHK it caught (each costs a RET).

    Like a real VMC on a noisy line it sends a command again when the answer never came, was
    garbled twice, or was a NAK or another lone word that is not ACK, up to
    :data:`COMMAND_TRIES` times; so a command the reader did get may reach it twice, which it
    must survive.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.approvals = 0
        self.unexpected_approvals = 0
        self.checksum_errors = 0
        self.resent = 0
        self._awaiting_approval = False

    async def command(self, payload: bytes, what: str, *, timed: bool = True) -> Answer:
        for _ in range(COMMAND_TRIES - 1):
            with contextlib.suppress(VmcSimError):
                answer = await super().command(payload, what, timed=timed)
                if not _garbled(answer):
                    return answer
            self.resent += 1
        return await super().command(payload, what, timed=timed)

    async def _retransmit(self, what: str) -> Answer:
        self.checksum_errors += 1
        return await super()._retransmit(what)

    async def poll(self) -> Answer:
        answer = await super().poll()
        if answer.code == c.Resp.VEND_APPROVED:
            if self._awaiting_approval:
                self.approvals += 1
            else:
                self.unexpected_approvals += 1
            self._awaiting_approval = False
        elif answer.code == c.Resp.VEND_DENIED:
            self._awaiting_approval = False
        return answer

    async def vend_request(self, price_raw: int, item: int) -> Answer:
        self._awaiting_approval = True
        return await super().vend_request(price_raw, item)

    async def vend_cancel(self) -> Answer:
        self._awaiting_approval = False
        return await super().vend_cancel()

    async def reset(self, *, timed: bool = True) -> Answer:
        self._awaiting_approval = False
        return await super().reset(timed=timed)

    def bus_reset(self) -> None:
        self._awaiting_approval = False
        super().bus_reset()


def _garbled(answer: Answer) -> bool:
    """Silence, a NAK (the reader's word for a block that failed its CHK), or one word that
    is not ACK: all mean "send it again"."""
    return answer.timed_out or (len(answer.words) == 1 and not answer.is_ack)


@dataclass(frozen=True, slots=True)
class DaemonLog:
    """What the reader's side said in its log about the drill."""

    vend_requests: int
    approved_ids: list[int]
    denied: int
    checksum_errors: int
    other_violations: int
    resets: int
    bus_exits: int
    tracebacks: int

    @classmethod
    def read(cls, path: Path) -> DaemonLog:
        events: list[dict[str, Any]] = []
        tracebacks = 0
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
            tracebacks += "Traceback" in line
        kinds = Counter(e.get("event") for e in events)
        violations = [e for e in events if e.get("event") == "mdb_protocol_violation"]
        checksum = sum(str(e.get("detail", "")).startswith("checksum error") for e in violations)
        return cls(
            vend_requests=kinds["vend_requested"],
            approved_ids=[int(e["vend_id"]) for e in events if e.get("event") == "vend_approved"],
            denied=kinds["vend_denied"],
            checksum_errors=checksum,
            other_violations=len(violations) - checksum,
            resets=kinds["reader_reset"],
            bus_exits=kinds["bus_process_exited"],
            tracebacks=tracebacks,
        )


@dataclass
class NoiseFigures:
    """One drill's figures; ``problems`` lists every check that failed (empty: all passed)."""

    ber: float
    drop_rate: float
    policy: str
    seed: int
    frames_to_reader: int = 0
    frames_to_vmc: int = 0
    frames_corrupted: int = 0
    bits_flipped: int = 0
    words_dropped: int = 0
    checksum_errors_reader: int = 0
    checksum_errors_vmc: int = 0
    commands_resent: int = 0
    sessions: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    resets_mid_vend: int = 0
    approvals_seen: int = 0
    false_approvals: int = 0
    sales_without_approval: int = 0
    vend_requests_reader: int = 0
    approvals_reader: int = 0
    recovery_polls: int | None = None
    clean_sale_after: str = ""
    bus_process_exits: int = 0
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def run_drill(
    state_dir: Path,
    spec: NoiseSpec,
    *,
    frames: int,
    policy: str = "accept",
    seed: int = 1,
    weights: dict[str, int] | None = None,
) -> NoiseFigures:
    """Sell under ``spec`` until ``frames`` VMC frames went out, then measure the recovery."""
    figures = NoiseFigures(spec.ber, spec.drop_rate, policy, seed)
    relay = NoiseRelay(seed)
    relay.start()
    daemon = DaemonProcess(relay.device_pair, state_dir, local_approval=policy)
    await daemon.start()
    vmc = WatchedVmc(relay.vmc_port, answer_timeout=ANSWER_TIMEOUT_S)
    try:
        await vmc.initialise(wait_s=READER_WAIT_S)
        relay.set_noise(spec)
        await _sell(
            vmc,
            relay,
            figures,
            frames=frames,
            rng=random.Random(seed),
            weights=weights or DEFAULT_WEIGHTS,
        )
        relay.set_noise(NoiseSpec())
        figures.recovery_polls = await _recovery_polls(vmc)
        figures.clean_sale_after = await _clean_sale(vmc, seed)
    finally:
        vmc.close()
        figures.exit_code = await daemon.stop()
        _count_line(figures, relay)
        relay.close()
    _judge(figures, vmc, DaemonLog.read(daemon.log_path), _sold_ids(state_dir))
    return figures


async def _sell(
    vmc: WatchedVmc,
    relay: NoiseRelay,
    figures: NoiseFigures,
    *,
    frames: int,
    rng: random.Random,
    weights: dict[str, int],
) -> None:
    customers = Customers(vmc, rng, poll_period=POLL_PERIOD_S, init=lambda: _reinit(vmc))
    names = [n for n in CUSTOMERS if weights.get(n, 0) > 0]
    outcomes: Counter[str] = Counter()
    while relay.to_device.model.counts.bursts < frames:
        figures.sessions += 1
        name = rng.choices(names, weights=[weights[n] for n in names])[0]
        try:
            result = await customers.run(name, figures.sessions)
        except VmcError:  # the VMC gave up on an answer: it starts over, as a real one does
            outcomes["error"] += 1
            await _reinit(vmc)
            continue
        outcomes[result.outcome] += 1
        figures.resets_mid_vend += name == "vmc_reset"
    figures.outcomes = dict(outcomes)


async def _reinit(vmc: WatchedVmc) -> None:
    """Initialise the reader again; on a noisy line that may take a few tries."""
    for _ in range(20):
        try:
            await vmc.initialise(wait_s=READER_WAIT_S)
        except VmcError:
            await asyncio.sleep(POLL_PERIOD_S)
            continue
        return


async def _recovery_polls(vmc: WatchedVmc) -> int | None:
    """POLLs sent on the quiet line until one was answered correctly (ACK or a good block)."""
    for polls in range(1, MAX_RECOVERY_POLLS + 1):
        try:
            answer = await vmc.poll()
        except VmcError:
            continue
        if answer.is_ack or answer.data:
            return polls
    return None


async def _clean_sale(vmc: WatchedVmc, seed: int) -> str:
    """One purchase on the quiet line after a fresh initialisation: its outcome."""
    await _reinit(vmc)
    customers = Customers(vmc, random.Random(seed), poll_period=POLL_PERIOD_S)
    try:
        return (await customers.run("purchase", 0)).outcome
    except VmcError as exc:
        return f"error: {exc}"


def _count_line(figures: NoiseFigures, relay: NoiseRelay) -> None:
    down: NoiseCounts = relay.to_device.model.counts
    up: NoiseCounts = relay.to_vmc.model.counts
    figures.frames_to_reader = down.bursts
    figures.frames_to_vmc = up.bursts
    figures.frames_corrupted = down.bursts_corrupted + up.bursts_corrupted
    figures.bits_flipped = down.bits_flipped + up.bits_flipped
    figures.words_dropped = down.words_dropped + up.words_dropped


def _sold_ids(state_dir: Path) -> list[int]:
    journal = Journal(state_dir / "journal.sqlite3")
    try:
        return [r.vend_id for r in journal.records("vend_success") if r.vend_id is not None]
    finally:
        journal.close()


def _judge(figures: NoiseFigures, vmc: WatchedVmc, log: DaemonLog, sold: list[int]) -> None:
    figures.checksum_errors_vmc = vmc.checksum_errors
    figures.commands_resent = vmc.resent
    figures.checksum_errors_reader = log.checksum_errors
    figures.approvals_seen = vmc.approvals + vmc.unexpected_approvals
    figures.vend_requests_reader = log.vend_requests
    figures.approvals_reader = len(log.approved_ids)
    figures.bus_process_exits = log.bus_exits
    twice = [i for i, n in Counter(log.approved_ids).items() if n > 1]
    false = vmc.unexpected_approvals + len(twice)
    if figures.policy == "deny":
        false += vmc.approvals + len(log.approved_ids)
    figures.false_approvals = false
    figures.sales_without_approval = len(set(sold) - set(log.approved_ids))
    forged = figures.approvals_seen - figures.approvals_reader
    expected_sale = "vended" if figures.policy == "accept" else "denied"
    checks = {
        f"{false} false approvals": false == 0,
        f"{figures.sales_without_approval} sales without approval": not (
            figures.sales_without_approval
        ),
        f"the VMC took {forged} more approvals than vmcd sent": forged <= 0,
        f"{log.bus_exits} bus process exits": log.bus_exits == 0,
        f"{log.tracebacks} tracebacks in the log": log.tracebacks == 0,
        f"vmcd exited with {figures.exit_code}": figures.exit_code == 0,
        f"no recovery within {MAX_RECOVERY_POLLS} polls": figures.recovery_polls is not None,
        f"clean sale after the noise: {figures.clean_sale_after}": (
            figures.clean_sale_after == expected_sale
        ),
    }
    figures.problems = [what for what, ok in checks.items() if not ok]
