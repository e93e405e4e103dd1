"""The bus processes must start small: none of the daemon's heavy libraries may load in them.

Each is imported as the supervisor starts it (after :data:`vmc.services.bus.BUS_PRELUDE`,
which keeps ``ssl`` out); what the daemon alone uses (the cloud, signatures, DEX and EVA-DTS,
rich) must not come along.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vmc.services.bus import BUS_PRELUDE

HEAVY = (
    "structlog",
    "serial",
    "cbor2",
    "aiomqtt",
    "paho",
    "sqlite3",
    "ssl",
    "cryptography",
    "rich",
    "protocols.evadts",
    "protocols.dex",
    "vmc.cloud",
)


@pytest.mark.parametrize("module", ["vmc.services.bus_process", "vmc.services.exe_process"])
def test_bus_process_imports_nothing_heavy(module: str) -> None:
    code = (
        f"{BUS_PRELUDE}; import json, {module}, drivers.ports; "
        "print(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    loaded = set(json.loads(out.stdout))
    assert module in loaded
    assert not {m for m in loaded for h in HEAVY if m == h or m.startswith(h + ".")}
