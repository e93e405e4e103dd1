"""``vmc-bridge``: run the bridge, check its configuration, list undelivered callbacks."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import NoReturn

from bridge.config import ConfigError, load
from bridge.store import SqlStore, open_store


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (exit 2), not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vmc-bridge",
        description="The Connectivity Platform's HTTP API in front of vmc machines (MQTT).",
    )
    # Required, but checked after parsing: a mistyped flag is the mistake to name first.
    parser.add_argument("--config", help="the bridge's TOML file (required)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "action",
        nargs="?",
        default="run",
        choices=["run", "check", "undelivered"],
        help="run (default), check the configuration, or list undelivered callbacks",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is None:
        parser.error("the following arguments are required: --config")
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"vmc-bridge: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.action == "check":
        print(f"vmc-bridge: {args.config}: ok, {len(config.third_parties)} third parties")
        return 0
    try:
        from bridge import run
    except ImportError as exc:
        print(
            f"vmc-bridge: needs the bridge extra (pip install 'vmc[bridge]'): {exc}",
            file=sys.stderr,
        )
        return 2
    if args.action == "undelivered":
        return asyncio.run(_undelivered(open_store(config.database)))
    from vmc.logs import configure_logging

    configure_logging(args.log_level)
    try:
        sock = run.listening(config.listen_host, config.listen_port)
    except OSError as exc:
        where = f"{config.listen_host}:{config.listen_port}"
        print(f"vmc-bridge: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    asyncio.run(run.serve(config, sock))
    return 0


async def _undelivered(store: SqlStore) -> int:
    """One JSON line per callback not delivered yet, oldest first."""
    await store.open()
    try:
        for d in await store.undelivered():
            row = {
                "third_party": d.third_party,
                "machine": d.machine,
                "path": d.path,
                "event_id": d.event_id,
                "attempts": d.attempts,
                "given_up": d.failed_at is not None,
                "last_error": d.last_error,
            }
            print(json.dumps(row))
    finally:
        await store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
