#!/usr/bin/env python3
"""A fleet on one broker: 10,000 simulated machines, all connected, remote vends on a sample.

The same run as ``vmc-sim fleet`` (:mod:`sim.fleet`), with the target's size as its default:
``--machines 10000 --vends 500 --rate 20`` on a private Mosquitto; every flag of
``vmc-sim fleet`` may follow and wins (``--broker nats``, ``--broker rabbitmq``, ``--workers``,
``--mqtt-version``...). Each machine is vmc's transaction engine and contract codec behind an
MQTT session of its own (client id, retained ``lost`` will, retained ``status`` and ``state``),
the machines shared by a few worker processes; the backend is ``sim.backend.SimBackend``.

``--json`` prints one object: ``machines``, ``connected``, ``connect_s`` (from starting the
workers to every machine subscribed with its ``online`` and ``state`` acknowledged),
``vends``, ``vends_ok``, ``vend_p50_ms`` and ``vend_p99_ms`` (from the backend's ``lock`` to its
hearing ``txn.vend``), ``broker``, ``broker_rss_mb`` (the broker's resident memory after the
vends), and extras (``mqtt_version``, ``workers``, ``vend_max_ms``, ``backend_online``,
``connect_retries``, ``dropped``, ``unacked``, ``problems``).

Target (reported, not asserted): 10,000 machines, all connected, every vend ok, vend p99 <=
50 ms, on a 2-core machine. docs/scaling.md has the numbers measured per broker.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sim.__main__ import main as vmc_sim  # noqa: E402

TARGET = ["--machines", "10000", "--vends", "500", "--rate", "20"]


def main(argv: list[str] | None = None) -> int:
    return vmc_sim(["fleet", *TARGET, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
