"""The bus processes must start small: none of the daemon's heavy libraries may load in them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("structlog", "serial", "cbor2", "aiomqtt", "paho", "sqlite3")


@pytest.mark.parametrize("module", ["vmc.services.bus_process", "vmc.services.exe_process"])
def test_bus_process_imports_nothing_heavy(module: str) -> None:
    code = f"import sys, json, {module}, drivers.ports; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    loaded = set(json.loads(out.stdout))
    assert not {m for m in loaded for h in HEAVY if m == h or m.startswith(h + ".")}
