#!/usr/bin/env python3
"""The bus-noise drill (sim.noise_drill) at a bit error rate or drop rate; one JSON line.

vmcd sells through a noisy pty relay until ``--frames`` VMC frames went out, the line goes
quiet, and the drill counts the polls to recovery. The exit code is 1 when any check failed
(``problems`` in the JSON says which). Example, the figures of docs/reliability.md:

    .venv/bin/python bench/bus_noise.py --ber 1e-3 --frames 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sim.noise import NoiseSpec  # noqa: E402
from sim.noise_drill import run_drill  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--ber", type=float, default=0.0, help="bit error rate on every 9-bit word")
    p.add_argument("--drop", type=float, default=0.0, help="probability a word is lost")
    p.add_argument("--frames", type=int, default=10_000, help="VMC frames sent under noise")
    p.add_argument("--policy", choices=("accept", "deny"), default="accept")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--resets-only", action="store_true", help="every session: reset mid-vend")
    return p


async def _run(args: argparse.Namespace) -> int:
    weights = {"vmc_reset": 1} if args.resets_only else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bus-noise-") as state:
        figures = await run_drill(
            Path(state),
            NoiseSpec(args.ber, args.drop),
            frames=args.frames,
            policy=args.policy,
            seed=args.seed,
            weights=weights,
        )
    report = figures.as_json() | {"elapsed_s": round(time.monotonic() - started, 1)}
    print(json.dumps(report))
    return 1 if figures.problems else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except ValueError as exc:
        print(f"bus_noise: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
