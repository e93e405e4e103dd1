"""Cash collections (seed 004 ``restock``): what a collection is and what its report says.

Pure: journal rows and parsed audits in, the ``collection.report`` event's parts out.

A collection is journaled when the command is answered, in that command's commit, with its
period: from the previous collection (None for the first) to now. Its report follows once the
audit read for it is over (or at once without a DEX port) and is a commit of its own that
marks the collection reported, so a daemon killed in between reports it after the restart,
exactly once. Periods chain: every sales row falls in exactly one collection's
``[since, until)``, and each audit delta runs from the audit of the last collection whose read
succeeded, so the reports add up over time whatever failed in between.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from protocols.evadts.deltas import cash_delta
from protocols.evadts.records import Audit, CrcStatus


@dataclass(frozen=True, slots=True)
class Collection:
    """One cash collection: its id (the command id), when, since when, and how far it got."""

    collection_id: str
    at: float
    since: float | None
    restock: bool
    reported: bool = False


@dataclass(frozen=True, slots=True)
class AuditError:
    """Why a collection report carries no audit: the read's id (None when none was made),
    the step that failed and the reason, as ``audit.failed`` names them."""

    read_id: str | None
    step: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


NO_DEX_PORT = AuditError(None, "config", "no DEX port configured")


def audit_problem(read_id: str, audit: Audit) -> AuditError | None:
    """Why an audit that was received cannot stand for the machine's counters, if it cannot."""
    if not audit.complete:
        return AuditError(read_id, "check", "the audit is incomplete (no SE or DXE)")
    if audit.crc is CrcStatus.MISMATCH:
        return AuditError(read_id, "check", "the audit's G85 check value does not match")
    return None


def audit_part(
    read_id: str,
    read_at: float,
    audit: Audit,
    baseline: tuple[str, Audit] | None,
) -> dict[str, Any]:
    """The coin mechanism's counters of ``audit`` and their change since ``baseline`` (the
    audit of the last collection whose read succeeded: its read id and its records)."""
    cash = audit.cash
    return {
        "read_id": read_id,
        "read_at": read_at,
        "decimals": audit.currency.decimals,
        "cash_sales": None if cash.sales is None else cash.sales.to_json(),
        "cash_in": None if cash.cash_in is None else dataclasses.asdict(cash.cash_in),
        "cash_out": None if cash.cash_out is None else dataclasses.asdict(cash.cash_out),
        "baseline_read_id": None if baseline is None else baseline[0],
        "delta": None if baseline is None else cash_delta(baseline[1], audit).to_json(),
    }
