"""A running vmcd loads only what its configuration uses (issue 13's footprint).

vmcd runs as the console script does (``vmc.launch.vmcd``) on a pty pair; after the VMC has
initialised the reader and bought something (and, with ``--mqtt``, the cloud link is up),
SIGUSR2 makes it write the names in ``sys.modules`` to a file. Without ``--mqtt`` no MQTT
client may be there, without keys no cryptography, without a DEX port no DEX link, and never
rich or pygments (structlog would pull them in for its console tracebacks) nor
importlib.metadata (only ``--version`` and ``vmctl status`` need it), nor http.client and email
(paho's ``import urllib.request`` waits for a use that never comes); on these MDB machines no
Executive master or port. No timing is asserted:
``bench/footprint.py`` measures what this saves.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

from drivers.pty import PtyPair
from sim.broker import MosquittoBroker
from sim.daemon_proc import DaemonProcess
from sim.scenarios import Customers
from sim.vmc_master import VmcMaster
from tests.waiting import wait_for

# The child: vmcd's console-script entry, with a SIGUSR2 handler that writes sys.modules to
# the file named first; the rest of the arguments are vmcd's.
VMCD_WITH_DUMP = """
import json, signal, sys
from vmc.launch import vmcd

DUMP = sys.argv[1]

def dump(*_):
    with open(DUMP, "w") as out:
        json.dump(sorted(sys.modules), out)

signal.signal(signal.SIGUSR2, dump)
sys.argv = ["vmcd", *sys.argv[2:]]
sys.exit(vmcd())
"""
NEVER = (
    "rich",
    "pygments",
    "cryptography",
    "protocols.dex",
    "vmc.services.reporter",
    "importlib.metadata",
    "http",  # and the email package: urllib.request's, imported by paho, loaded only on use
    "email",
    "protocols.exe.master",  # an MDB machine: the Executive master and its port stay out
    "drivers.exe_port",
    "drivers.dex_port",
)
WITHOUT_MQTT = ("aiomqtt", "paho", "vmc.cloud.sync")


def _loaded(names: list[str], packages: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in packages)]


def _events(log: Path, name: str) -> int:
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        count += isinstance(event, dict) and event.get("event") == name
    return count


async def _modules_after_sales(
    tmp_path: Path, *extra: str, customers: tuple[str, ...], wait_event: str
) -> list[str]:
    pair = PtyPair()
    dump = tmp_path / "modules.json"
    daemon = DaemonProcess(
        pair, tmp_path / "state", extra=extra, program=("-c", VMCD_WITH_DUMP, str(dump))
    )
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise(level=3)
        played = Customers(vmc, random.Random(3), poll_period=0.01)
        for number, customer in enumerate(customers, 1):
            result = await played.run(customer, number)
            assert result.ok, result
        await wait_for(lambda: _events(daemon.log_path, wait_event), 20, wait_event)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGUSR2)
        names: list[str] = await wait_for(
            lambda: dump.exists() and json.loads(dump.read_text() or "null"), 20, "the dump"
        )
    finally:
        vmc.close()
        code = await daemon.stop()
        pair.close()
    assert code == 0, daemon.log_path.read_text()[-2000:]
    return names


async def test_daemon_without_mqtt_or_dex_loads_neither(tmp_path: Path) -> None:
    names = await _modules_after_sales(
        tmp_path, customers=("purchase", "cash_sale"), wait_event="bus_ready"
    )
    assert "vmc.daemon" in names  # the dump is of a running daemon
    assert not _loaded(names, NEVER + WITHOUT_MQTT)


async def test_daemon_with_mqtt_loads_the_client_and_nothing_else(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    names = await _modules_after_sales(
        tmp_path,
        "--mqtt",
        broker.url,
        "--device-id",
        "m1",
        customers=("cash_sale",),
        wait_event="mqtt_connected",
    )
    assert _loaded(names, ("aiomqtt",))  # the check sees what is loaded
    assert not _loaded(names, NEVER)
