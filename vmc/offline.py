"""Bounded offline approvals (sans-I/O: data and one decision, no clock, no I/O).

While the MQTT link is down nobody can answer a ``txn.request``. For machines whose customers
the operator knows (members, badge holders: seed 001's member-only shop, a site handing out
protective gear), the backend may push an **allow-list** of references with a limit each, and
the machine may then approve a presented reference by itself, within bounds the operator sets
in ``[offline]``:

- per reference: at most ``max_vends`` vends and ``max_value`` minor units (the list's);
- in total: at most ``max_vends`` vends and ``max_total_value`` minor units (the config's);
- the list's age: at most ``max_list_age_h`` hours, counted from the earlier of its issue time
  (the backend's clock) and its receipt (the machine's).

Usage is counted **per list**: what the vends approved under the list in force took. A new
list starts from nothing, because the backend built it knowing the vends it had heard of.

:func:`decide` gives one presented reference an :class:`Allowance` (the most its one vend may
cost) or a :class:`Denial`. The engine then opens a session of kind ``offline``
(:mod:`vmc.credit`) with that value: the price is reserved in the approval's fsynced commit,
given back if nothing was dispensed, and each vend is a ``txn.vend`` with ``offline: true``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

HOUR_S = 3600.0


class Denial(StrEnum):
    """Why a presented reference is not approved offline; stable strings."""

    DISABLED = "offline_disabled"
    NO_LIST = "no_list"
    LIST_TOO_OLD = "list_too_old"
    UNKNOWN_REF = "unknown_ref"
    REF_VENDS = "ref_vends"
    REF_VALUE = "ref_value"
    TOTAL_VENDS = "total_vends"
    TOTAL_VALUE = "total_value"


@dataclass(frozen=True, slots=True)
class Bounds:
    """The operator's ``[offline]`` bounds; ``enabled`` False denies everything."""

    enabled: bool = False
    max_total_value: int = 0
    max_vends: int = 0
    max_list_age_h: float = 24.0


@dataclass(frozen=True, slots=True)
class Limit:
    """One reference of the list: how many vends, and how much, it may take offline."""

    ref: str
    max_vends: int
    max_value: int


@dataclass(frozen=True, slots=True)
class AllowList:
    """The backend's list in force: ``issued_at`` is the backend's time, ``received_at`` the
    machine's, both POSIX seconds."""

    version: int
    issued_at: float
    received_at: float
    limits: Mapping[str, Limit]

    def age(self, now: float) -> float | None:
        """Seconds since the earlier of issue and receipt; None when the clock went back
        before the receipt (its age cannot be told)."""
        if now < self.received_at:
            return None
        return now - min(self.issued_at, self.received_at)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "issued_at": self.issued_at,
                "received_at": self.received_at,
                "limits": [[x.ref, x.max_vends, x.max_value] for x in self.limits.values()],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> AllowList:
        data = json.loads(text)
        limits = (Limit(str(r), int(v), int(x)) for r, v, x in data["limits"])
        return cls(
            int(data["version"]),
            float(data["issued_at"]),
            float(data["received_at"]),
            {x.ref: x for x in limits},
        )


@dataclass(frozen=True, slots=True)
class Spent:
    vends: int = 0
    value: int = 0

    def __add__(self, other: Spent) -> Spent:
        return Spent(self.vends + other.vends, self.value + other.value)


@dataclass(frozen=True, slots=True)
class Usage:
    """What the offline vends of one list took, in total and per reference."""

    total: Spent = Spent()
    refs: Mapping[str, Spent] = field(default_factory=dict)

    def of(self, ref: str) -> Spent:
        return self.refs.get(ref, Spent())

    def add(self, ref: str, spent: Spent) -> Usage:
        return Usage(self.total + spent, {**self.refs, ref: self.of(ref) + spent})

    @classmethod
    def summed(cls, rows: Iterable[tuple[str, Spent]]) -> Usage:
        usage = cls()
        for ref, spent in rows:
            usage = usage.add(ref, spent)
        return usage


@dataclass(frozen=True, slots=True)
class Allowance:
    """One vend for ``ref``, of at most ``value`` minor units, under list ``version``."""

    ref: str
    value: int
    version: int


def decide(
    ref: str, allow: AllowList | None, usage: Usage, bounds: Bounds, now: float
) -> Allowance | Denial:
    """May ``ref`` have one vend offline, and of how much at most?

    ``usage`` must be the list's usage with nothing open (one session at a time), so what is
    allowed here is still free when the vend comes.
    """
    if not bounds.enabled:
        return Denial.DISABLED
    if allow is None:
        return Denial.NO_LIST
    age = allow.age(now)
    if age is None or age > bounds.max_list_age_h * HOUR_S:
        return Denial.LIST_TOO_OLD
    limit = allow.limits.get(ref)
    if limit is None:
        return Denial.UNKNOWN_REF
    mine = usage.of(ref)
    if mine.vends >= limit.max_vends:
        return Denial.REF_VENDS
    if usage.total.vends >= bounds.max_vends:
        return Denial.TOTAL_VENDS
    if mine.value >= limit.max_value:
        return Denial.REF_VALUE
    if usage.total.value >= bounds.max_total_value:
        return Denial.TOTAL_VALUE
    value = min(limit.max_value - mine.value, bounds.max_total_value - usage.total.value)
    return Allowance(ref, value, allow.version)


def offline_state(bounds: Bounds, allow: AllowList | None, usage: Usage) -> dict[str, object]:
    """The retained ``state``'s ``offline`` map: the list in force and what it took."""
    return {
        "enabled": bounds.enabled,
        "list_version": None if allow is None else allow.version,
        "issued_at": None if allow is None else allow.issued_at,
        "received_at": None if allow is None else allow.received_at,
        "refs": 0 if allow is None else len(allow.limits),
        "vends": usage.total.vends,
        "value": usage.total.value,
    }
