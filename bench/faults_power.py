#!/usr/bin/env python3
"""Power-cut fault runner: a thousand kill -9 of vmcd across its money and stock flows.

Each cut falls at a seeded random point of a remote vend (lock, request, approval, dispense),
of a voucher or credit session, or of a stream of refills and planogram changes; the daemon
restarts on the same journal after each. Cuts run in batches on fresh machines (the real vmcd
on a pty pair, a private Mosquitto, the simulated VMC and backend, as in the e2e tests), and
each batch's books are checked before the next starts (``tests/e2e/power_cuts.py`` says what is
checked). Prints the seed first (on stderr, with each batch's figures), then one JSON report:
runs, outcomes and faults per flow (lost, double approvals, double bookings, inconsistent),
the backend's dropped redeliveries, elapsed seconds. Exits 1 if any fault was found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sim.broker import MosquittoBroker  # noqa: E402
from tests.e2e.power_cuts import FLOWS, Figures, run_suite  # noqa: E402


def _say(figures: Figures) -> None:
    print(json.dumps({"batch": figures.flow, **figures.report()}), file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vmc-faults-") as work, MosquittoBroker() as broker:
        suite = await run_suite(
            Path(work),
            broker,
            args.runs,
            args.seed,
            batch=args.batch,
            flows=args.flows,
            on_batch=_say,
        )
    return {"machine": platform.node(), "python": platform.python_version(), **suite.report()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=1002, help="cuts in all (default 1002)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a new one)")
    p.add_argument("--batch", type=int, default=50, help="cuts per machine (default 50)")
    p.add_argument(
        "--flows",
        type=lambda text: tuple(text.split(",")),
        default=tuple(FLOWS),
        help=f"comma-separated flows (default {','.join(FLOWS)})",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.runs < 1 or args.batch < 1:
        parser.error("--runs and --batch must be at least 1")
    unknown = set(args.flows) - set(FLOWS)
    if unknown:
        parser.error(f"unknown flow(s): {', '.join(sorted(unknown))}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    print(f"faults_power: seed {args.seed}", file=sys.stderr, flush=True)
    report = asyncio.run(_run(args))
    print(json.dumps(report) if args.json else json.dumps(report, indent=2))
    faults = sum(report[k] for k in ("lost", "double_approvals", "double_bookings", "inconsistent"))
    return 1 if faults else 0


if __name__ == "__main__":
    raise SystemExit(main())
