"""``vmctl dex read`` as a field technician runs it, against the simulated VMC on a pty."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from drivers.pty import PtyPair
from sim.dex_source import DexSource
from tests.e2e.console import vmctl
from tests.samples import AUDIT


async def test_read_saves_the_audit_and_prints_its_summary(tmp_path: Path) -> None:
    pair = PtyPair()
    source = DexSource(pair.master.fileno(), AUDIT)
    serving = asyncio.create_task(source.serve(reads=1))
    try:
        out_file = tmp_path / "read.dex"
        code, out, err = await vmctl(
            "dex", "read", "--port", pair.device_url, "--out", str(out_file), "--json"
        )
        assert code == 0, err
        assert out_file.read_bytes() == AUDIT
        summary = json.loads(out)
        assert summary["crc"] == "ok"
        assert summary["machine"]["serial"]
        assert f"saved {len(AUDIT)} bytes" in err
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        pair.close()


async def test_a_silent_machine_is_a_one_line_error(tmp_path: Path) -> None:
    pair = PtyPair()  # nobody answers on the other end
    try:
        code, out, err = await vmctl("dex", "read", "--port", pair.device_url)
    finally:
        pair.close()
    assert code == 2
    assert out == ""
    assert err.startswith("vmctl: read failed at first handshake")
    assert err.count("\n") == 1


async def test_no_port_is_refused() -> None:
    code, _, err = await vmctl("dex", "read")
    assert code == 2
    assert "no DEX port" in err
