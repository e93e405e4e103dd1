#!/usr/bin/env python3
"""EVA-DTS audit throughput of vmc: how fast an audit is parsed, and read over a 9600 Bd link.

A reporter parses every DEX read, and machines with long product lists send audits of
hundreds of kilobytes, so the parser runs on a small CPU with MB-sized input. Measured:

- ``parse``: ``parse`` of a 1 MB audit built the realistic way: a real audit's header (the
  corpus file ``rheavendors_luce_x2.dex`` unless ``--base`` names another), then its full
  product blocks (PA1, PA2, PA3, PA4, PA7 per payment device, PA8) repeated with fresh
  selection numbers, then its trailer with a G85 and SE made right, CRLF lines. ``parse``
  returns the audit with its products converted lazily (each the first time it is read), so
  ``read`` also times reading every product (``list(audit.products)``): that is the figure to
  compare with a parser that converts everything up front. ``pa1_pa4_`` is the same with only
  the PA1-PA4 lines of each block, and ``pa1_pa2_`` the writer's own audit of PA1+PA2 blocks
  (the figure this bench reported before).
- ``python_split``: a bare Python ``split`` of the realistic audit into lines and elements,
  decode included: no conversion, no records. It is a reference, not a floor, for the
  parser's speed.

Each figure is the best wall time (``time.perf_counter``) of ``--repeat`` runs, in MB/s with
MB = 10**6 bytes, garbage collection left on as in production, the actions taking turns.
Target (reported, not asserted): parse >= 45 MB/s (80 the stretch) on a machine where the bare
split makes ~115 MB/s, so ``parse_to_split`` >= 0.4 is the machine-independent form of it.

``cli_parse_ms``: the whole process ``vmctl dex parse FILE --json`` on the base audit (best of
``--repeat``; target <= 80 ms), beside ``python_start_ms``, the same interpreter started with
nothing to do, timed in the same turns: their difference is what vmctl itself costs.

The link read: ``read_audit`` of a generated 20 KB audit over a pty from the simulated VMC,
which paces what it sends at 9600 Bd 8N1 as a UART would (a pty alone passes bytes at once);
the reader's few bytes (an ACK a block) go unpaced. ``read_s`` runs from the call to the audit
returned; ``floor_s`` is the audit's own line time, bytes x 10 / 9600, and ``read_vs_floor``
their ratio (target <= 1.1). ``wire_bytes`` counts what the VMC sent (framing, handshakes and
all) and ``read_vs_wire_floor`` compares with its line time: what is left is waiting (the spec's
10 ms turnaround at each end of each block, its 100 ms pauses between sessions). The same with a
VMC that does not wait (``instant_vmc_...``, faster than the spec allows) leaves the reader's
own share, and over Enhanced DDCMP (START at 2400 Bd, then 9600) it is reported as
``ddcmp_...``; a failed extra read is reported as ``<prefix>error``. The reads run at once, each
on its own pty: each is a line's worth of waiting, and this part stays within half a minute.

A measurement is a function of the parsed arguments returning a dict of figures; ``run`` merges
what every function in ``MEASUREMENTS`` returns into the one JSON object ``--json`` prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from drivers.dex_port import open_dex_port  # noqa: E402
from drivers.pty import PtyPair  # noqa: E402
from protocols.crc16 import crc16_arc  # noqa: E402
from protocols.dex.ucs import UcsTimers  # noqa: E402
from protocols.evadts import parse  # noqa: E402
from protocols.evadts.records import CrcStatus, Product, Sales  # noqa: E402
from protocols.evadts.writer import make_audit, write  # noqa: E402
from sim.dex_ddcmp_source import DdcmpAuditSource  # noqa: E402
from sim.dex_source import DexSource  # noqa: E402
from tests.corpus import corpus_root  # noqa: E402
from vmc.logs import configure_logging  # noqa: E402
from vmc.services.dex_read import read_audit  # noqa: E402

MB = 1_000_000
TARGET_PARSE_MB_PER_S = 45
STRETCH_PARSE_MB_PER_S = 80
BASE_AUDIT = "rheavendors_luce_x2.dex"
PRICES = (50, 75, 100, 120, 150, 200, 250)
LINK_BAUD = 9600
LINK_AUDIT_BYTES = 20_000
TARGET_READ_VS_FLOOR = 1.1
TARGET_CLI_PARSE_MS = 80
READ_TIMEOUT_S = 60.0
INSTANT_VMC = UcsTimers(turnaround=0.0, session_pause=0.0)
"""A VMC that answers at once and does not pause between sessions (faster than the spec)."""

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


def realistic_audit(base: bytes, size: int, tags: frozenset[str] | None = None) -> bytes:
    """``base``'s header, its product blocks (only the lines of ``tags``, if given) repeated
    with fresh selection numbers to about ``size`` bytes, and its trailer, with the G85 CRC
    and the SE01 count of the result; CRLF lines."""
    lines = base.decode("latin-1").replace("\r\n", "\n").split("\n")
    products = [i for i, line in enumerate(lines) if line.startswith("PA")]
    if not products:
        raise ValueError("the base audit has no product lines")
    head, body, tail = (
        lines[: products[0]],
        lines[products[0] : products[-1] + 1],
        lines[products[-1] + 1 :],
    )
    blocks: list[list[list[str]]] = []
    for line in body:
        fields = line.split("*")
        if fields[0] == "PA1":
            blocks.append([])
        if blocks and (tags is None or fields[0] in tags):
            blocks[-1].append(fields)
    trailer = [line for line in tail if line and not line.startswith(("G85", "SE*", "DXE"))]
    out: list[str] = []
    total = sum(len(line) + 2 for line in head + trailer)
    number = 0
    while total < size:
        for block in blocks:
            number += 1
            for fields in block:
                renumbered = fields[0] in ("PA1", "PA7")  # their 01 is the selection number
                text = "*".join([fields[0], str(number), *fields[2:]] if renumbered else fields)
                out.append(text)
                total += len(text) + 2
    lines = head + out + trailer
    st = next(i for i, line in enumerate(lines) if line.startswith("ST*"))
    crc = crc16_arc(("\r\n".join(lines[st:]) + "\r\n").encode("latin-1"))
    lines += [f"G85*{crc:04X}", f"SE*{len(lines) - st + 2}*0001", "DXE*1*1", ""]
    return "\r\n".join(lines).encode("latin-1")


def base_audit(args: argparse.Namespace) -> bytes:
    path = args.base or corpus_root() / "dex" / BASE_AUDIT
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SystemExit(f"bench/dex.py: {path}: {exc.strerror}; give --base FILE") from None


def _read_all(data: bytes) -> None:
    audit = parse(data)
    list(audit.products)


def measure_parse(args: argparse.Namespace) -> Report:
    base = base_audit(args)
    audit = realistic_audit(base, MB)
    pa1_pa4 = realistic_audit(base, MB, frozenset({"PA1", "PA2", "PA3", "PA4"}))
    pa1_pa2, products = generated_audit(MB)
    audit_5mb = realistic_audit(base, 5 * MB)
    parsed = parse(audit)
    if parsed.crc is not CrcStatus.OK or parsed.warnings:
        raise SystemExit(f"bench/dex.py: the built audit does not parse clean: {parsed.warnings}")
    seconds = best_seconds(
        {
            "parse": lambda: parse(audit),
            "read": lambda: _read_all(audit),
            "split": lambda: python_split(audit),
            "pa1_pa4": lambda: parse(pa1_pa4),
            "pa1_pa4_read": lambda: _read_all(pa1_pa4),
            "pa1_pa2": lambda: parse(pa1_pa2),
            "pa1_pa2_read": lambda: _read_all(pa1_pa2),
            "parse_5mb": lambda: parse(audit_5mb),
        },
        args.repeat,
    )

    def rate(size: int, name: str) -> float:
        return round(size / seconds[name] / MB, 1)

    return {
        "parse_mb_per_s": rate(len(audit), "parse"),
        "read_mb_per_s": rate(len(audit), "read"),
        "parse_mb_per_s_5mb": rate(len(audit_5mb), "parse_5mb"),
        "pa1_pa4_parse_mb_per_s": rate(len(pa1_pa4), "pa1_pa4"),
        "pa1_pa4_read_mb_per_s": rate(len(pa1_pa4), "pa1_pa4_read"),
        "pa1_pa2_parse_mb_per_s": rate(len(pa1_pa2), "pa1_pa2"),
        "pa1_pa2_read_mb_per_s": rate(len(pa1_pa2), "pa1_pa2_read"),
        "python_split_mb_per_s": rate(len(audit), "split"),
        "parse_to_split": round(seconds["split"] / seconds["parse"], 2),
        "read_to_split": round(seconds["split"] / seconds["read"], 2),
        "target_parse_mb_per_s": TARGET_PARSE_MB_PER_S,
        "stretch_parse_mb_per_s": STRETCH_PARSE_MB_PER_S,
        "audit_bytes": len(audit),
        "audit_products": len(parsed.products),
        "pa1_pa2_products": products,
    }


def vmctl_command() -> list[str]:
    """``vmctl`` as installed beside this interpreter, else the module run by it."""
    script = Path(sys.executable).with_name("vmctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vmc.cli"]


def measure_cli(args: argparse.Namespace) -> Report:
    """Whole-process time of ``vmctl dex parse FILE --json`` on the real base audit.

    A technician runs it on a Pi, where the interpreter's own start is most of it, so the
    interpreter started bare (``python -c pass``, site included) is timed in the same turns.
    """
    path = str(args.base or corpus_root() / "dex" / BASE_AUDIT)
    commands = {
        "cli": [*vmctl_command(), "dex", "parse", path, "--json"],
        "python": [sys.executable, "-c", "pass"],
    }
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            runs[name].append(time.perf_counter() - start)

    def ms(seconds: float) -> float:
        return round(seconds * 1000, 1)

    cli, bare = sorted(runs["cli"]), sorted(runs["python"])
    return {
        "cli_parse_ms": ms(cli[0]),
        "cli_parse_ms_median": ms(cli[len(cli) // 2]),
        "python_start_ms": ms(bare[0]),
        "cli_parse_over_python_ms": ms(cli[0] - bare[0]),
        "target_cli_parse_ms": TARGET_CLI_PARSE_MS,
        "cli_audit_bytes": Path(path).stat().st_size,
    }


def line_seconds(size: int) -> float:
    """How long ``size`` bytes take on the link: 10 bits each (8N1)."""
    return size * 10 / LINK_BAUD


async def timed_read(
    audit: bytes, protocol: str, vmc_timers: UcsTimers | None = None
) -> tuple[float, int]:
    """Seconds ``read_audit`` takes to return ``audit`` over a paced pty, and the bytes the
    VMC had sent by then."""
    pair = PtyPair()
    port = open_dex_port(pair.device_url, baud=LINK_BAUD)
    if protocol == "ddcmp":
        ddcmp = DdcmpAuditSource(pair.master, audit, paced=True)
        line, serving = ddcmp.line, ddcmp.start()
    else:
        ucs = DexSource(pair.master.fileno(), audit, baud=LINK_BAUD, timers=vmc_timers)
        line, serving = ucs.line, asyncio.create_task(ucs.serve())
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            start = time.perf_counter()
            got = await read_audit(port, protocol=protocol)
            seconds = time.perf_counter() - start
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        port.close()
        pair.close()
    if got != audit:
        raise RuntimeError(f"{protocol}: the audit read is not the one served")
    return seconds, line.sent


async def _reads(audit: bytes) -> dict[str, tuple[float, int] | BaseException]:
    """The link reads, at once, by the prefix of their figures."""
    reads = {
        "": timed_read(audit, "ucs"),
        "instant_vmc_": timed_read(audit, "ucs", INSTANT_VMC),
        "ddcmp_": timed_read(audit, "ddcmp"),
    }
    results = await asyncio.gather(*reads.values(), return_exceptions=True)
    return dict(zip(reads, results, strict=True))


def measure_link_read(args: argparse.Namespace) -> Report:
    audit, _ = generated_audit(LINK_AUDIT_BYTES)
    floor_s = line_seconds(len(audit))
    results = asyncio.run(_reads(audit))
    if isinstance(results[""], BaseException):
        raise results[""]  # the DEX/UCS read is the one the target is about
    report: Report = {
        "link_baud": LINK_BAUD,
        "link_audit_bytes": len(audit),
        "floor_s": round(floor_s, 2),
        "target_read_vs_floor": TARGET_READ_VS_FLOOR,
    }
    for prefix, result in results.items():
        if isinstance(result, BaseException):
            report[f"{prefix}error"] = f"{type(result).__name__}: {result}"
            continue
        read_s, wire_bytes = result
        report[f"{prefix}read_s"] = round(read_s, 2)
        report[f"{prefix}read_vs_floor"] = round(read_s / floor_s, 3)
        report[f"{prefix}wire_bytes"] = wire_bytes
        report[f"{prefix}read_vs_wire_floor"] = round(read_s / line_seconds(wire_bytes), 3)
    return report


MEASUREMENTS: tuple[Measurement, ...] = (measure_parse, measure_cli, measure_link_read)


def run(args: argparse.Namespace) -> Report:
    report: Report = {"python": platform.python_version(), "repeat": args.repeat}
    for measurement in MEASUREMENTS[:2] if args.parse_only else MEASUREMENTS:
        report.update(measurement(args))
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeat", type=int, default=9, help="runs per figure, the best counts")
    p.add_argument(
        "--parse-only", action="store_true", help="leave out the link reads (parse and CLI only)"
    )
    p.add_argument(
        "--base", type=Path, help=f"the real audit to build from (default: corpus {BASE_AUDIT})"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("warning", sys.stderr)  # the reader's log lines stay off the report
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
