"""What a demo run is judged by: each side's count of what happened, compared.

The demo prints one line per check (``match``/``MISMATCH`` for two counts of the same thing,
``ok``/``FAILED`` for a count of problems) and exits non-zero when any check failed, so a
script or CI job can tell a run where the books, the audit and the VMC disagree from a good one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


def money(minor: int, decimals: int = 2) -> str:
    """Minor units in the currency's major unit: 1540 -> '15.40'."""
    if decimals == 0:
        return str(minor)
    sign = "-" if minor < 0 else ""
    whole, part = divmod(abs(minor), 10**decimals)
    return f"{sign}{whole}.{part:0{decimals}d}"


@dataclass(frozen=True, slots=True)
class Tally:
    """A count of vends and their value in minor units, as one side of the run saw them."""

    vends: int
    value: int

    def describe(self, decimals: int) -> str:
        return f"{self.vends} vends worth {money(self.value, decimals)}"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    verdict: str
    detail: str

    def line(self) -> str:
        return f"{self.name:>24}: {self.verdict}  {self.detail}"


def compare(
    name: str, left: tuple[str, Tally], right: tuple[str, Tally], *, decimals: int = 2
) -> Check:
    """Two sides' tallies of the same sales: ``match`` only when both agree exactly."""
    (left_name, ours), (right_name, theirs) = left, right
    if ours == theirs:
        return Check(name, True, "match", f"{ours.describe(decimals)} on both sides")
    detail = f"{left_name}: {ours.describe(decimals)}, {right_name}: {theirs.describe(decimals)}"
    return Check(name, False, "MISMATCH", detail)


def compare_levels(
    name: str, left: tuple[str, Mapping[int, int]], right: tuple[str, Mapping[int, int]]
) -> Check:
    """Two sides' stock levels per selection: ``match`` only when every level agrees."""
    (left_name, ours), (right_name, theirs) = left, right
    if not ours and not theirs:
        return missing(name, "no selection to compare: no planogram was loaded")
    if ours == theirs:
        return Check(
            name, True, "match", f"{len(ours)} selections, {sum(ours.values())} units on both sides"
        )
    differ = [
        f"item {n}: {left_name} {ours.get(n, '-')}, {right_name} {theirs.get(n, '-')}"
        for n in sorted(ours.keys() | theirs.keys())
        if ours.get(n) != theirs.get(n)
    ]
    shown = "; ".join(differ[:3]) + ("; ..." if len(differ) > 3 else "")
    return Check(name, False, "MISMATCH", shown)


def missing(name: str, why: str) -> Check:
    """A comparison that could not be made counts as a disagreement."""
    return Check(name, False, "MISMATCH", why)


def problems(name: str, found: Sequence[str], total: int, what: str) -> Check:
    """``ok`` when none of ``total`` items had a problem; the first few problems otherwise."""
    if not found:
        return Check(name, True, "ok", f"0 of {total} {what}")
    shown = "; ".join(found[:3]) + ("; ..." if len(found) > 3 else "")
    return Check(name, False, "FAILED", f"{len(found)} of {total} {what}: {shown}")


def timing(violations: Sequence[str], answers: int) -> Check:
    return problems("bus timing", violations, answers, "answers late (5 ms) or with a gap (1 ms)")


def verdict(checks: Iterable[Check]) -> tuple[str, int]:
    """The closing line of the run and its exit code (0 only when every check passed)."""
    checks = list(checks)
    failed = [c.name for c in checks if not c.ok]
    if not failed:
        return f"all {len(checks)} checks passed", 0
    return f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}", 1


def report(checks: Sequence[Check]) -> int:
    """Print the checks and the verdict; the exit code."""
    print("--- checks ---")
    for check in checks:
        print(check.line())
    line, code = verdict(checks)
    print(line)
    return code
