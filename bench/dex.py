#!/usr/bin/env python3
"""EVA-DTS audit throughput of vmc: how fast ``protocols.evadts.parse`` reads a large audit.

A reporter parses every DEX read, and machines with long product lists send audits of
hundreds of kilobytes, so the parser runs on a small CPU with MB-sized input. Measured:

- ``parse``: ``parse`` of a generated audit (the writer's output, so a valid one with SE and
  G85) whose product blocks (PA1 with a name, PA2 with four counters, CRLF lines) make 1 MB,
  and the same with 5 MB; the full record model is built, the G85 CRC checked.
- ``python_split``: a bare Python ``split`` of the 1 MB audit into lines and elements, decode
  included: no conversion, no records. It is a reference, not a floor, for the parser's speed.

Each figure is the best wall time (``time.perf_counter``) of ``--repeat`` runs, in MB/s with
MB = 10**6 bytes, garbage collection left on as in production. Target (reported, not asserted):
parse >= 60 MB/s on a machine where the bare split makes ~115 MB/s, so ``parse_to_split``
(the ratio of the two here) >= 0.5 is the machine-independent form of it.

A measurement is a function of the parsed arguments returning a dict of figures; ``run`` merges
what every function in ``MEASUREMENTS`` returns into the one JSON object ``--json`` prints.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocols.evadts import parse  # noqa: E402
from protocols.evadts.records import Product, Sales  # noqa: E402
from protocols.evadts.writer import make_audit, write  # noqa: E402

MB = 1_000_000
TARGET_PARSE_MB_PER_S = 60
PRICES = (50, 75, 100, 120, 150, 200, 250)

Report: TypeAlias = dict[str, float | int | str]
Measurement: TypeAlias = Callable[[argparse.Namespace], Report]


def generated_audit(product_bytes: int, seed: int = 1) -> tuple[bytes, int]:
    """A written audit with about ``product_bytes`` of PA1+PA2 blocks, and its product count."""
    rng = random.Random(seed)
    sample = [_product(rng, number) for number in range(1, 1001)]
    per_product = (
        len(write(make_audit(serial="BENCH00001", products=sample))) - len(_empty())
    ) / 1000
    count = round(product_bytes / per_product)
    products = [_product(rng, number) for number in range(1, count + 1)]
    return write(make_audit(serial="BENCH00001", model="BENCH", products=products)), count


def _empty() -> bytes:
    return write(make_audit(serial="BENCH00001"))


def _product(rng: random.Random, number: int) -> Product:
    price = rng.choice(PRICES)
    vends_init = rng.randrange(100_000)
    vends_reset = rng.randrange(min(vends_init, 500) + 1)
    paid = Sales(vends_init, vends_init * price, vends_reset, vends_reset * price)
    return Product(str(number), price, f"PRODUCT {number:05d}", paid)


def best_seconds(actions: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """The fastest of ``repeat`` wall times of each action, the actions taking turns.

    Taking turns, rather than timing one action's runs and then the next's, keeps a drift in
    the machine's speed (a shared CPU, frequency changes) out of the ratio of two figures.
    """
    best = dict.fromkeys(actions, float("inf"))
    for _ in range(repeat):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def python_split(data: bytes) -> list[list[str]]:
    """The reference: decode, split into lines, split each line into elements."""
    return [line.split("*") for line in data.decode("latin-1").split("\r\n")]


def measure_parse(args: argparse.Namespace) -> Report:
    audit, products = generated_audit(MB)
    audit_5mb, products_5mb = generated_audit(5 * MB)
    seconds = best_seconds(
        {
            "parse": lambda: parse(audit),
            "split": lambda: python_split(audit),
            "parse_5mb": lambda: parse(audit_5mb),
        },
        args.repeat,
    )
    parse_s, split_s, parse_5mb_s = seconds["parse"], seconds["split"], seconds["parse_5mb"]
    return {
        "parse_mb_per_s": round(len(audit) / parse_s / MB, 1),
        "parse_mb_per_s_5mb": round(len(audit_5mb) / parse_5mb_s / MB, 1),
        "python_split_mb_per_s": round(len(audit) / split_s / MB, 1),
        "parse_to_split": round(split_s / parse_s, 2),
        "target_parse_mb_per_s": TARGET_PARSE_MB_PER_S,
        "audit_bytes": len(audit),
        "audit_bytes_5mb": len(audit_5mb),
        "products": products,
        "products_5mb": products_5mb,
    }


MEASUREMENTS: tuple[Measurement, ...] = (measure_parse,)


def run(args: argparse.Namespace) -> Report:
    report: Report = {"python": platform.python_version(), "repeat": args.repeat}
    for measurement in MEASUREMENTS:
        report.update(measurement(args))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeat", type=int, default=9, help="runs per figure, the best counts")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
