"""vmcd on a pty with the simulated VMC: reader options on the wire, and what the log says."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from drivers.pty import PtyPair
from protocols.mdb import commands as c
from protocols.mdb.words import checksum, vmc_words
from sim.daemon_proc import DaemonProcess
from sim.scenarios import Customers, run_customers
from sim.vmc_master import VmcMaster

VMCD = Path(sys.executable).parent / "vmcd"


def _log(daemon: DaemonProcess) -> list[dict[str, Any]]:
    lines = daemon.log_path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_the_vmc_reads_the_configured_currency_media_id_and_language(
    tmp_path: Path,
) -> None:
    config = tmp_path / "vmc.toml"
    config.write_text(
        '[reader]\ncurrency = 978\ntelephone_code = 49\nlanguage = "de"\n'
        "payment_media_id = 0x0A0B0C0D\n"
    )
    pair = PtyPair()
    daemon = DaemonProcess(pair, tmp_path / "state", extra=("--config", str(config)))
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        # Without always-idle, --local-approval accept offers a session once enabled.
        info = await vmc.initialise(want_features=int(c.Feature.WIDE_MONEY))
        assert info.currency_code == c.CurrencyCode(49, c.CurrencyForm.TELEPHONE)
        await Customers(vmc, random.Random(1)).poll_for({c.Resp.BEGIN_SESSION}, 5.0)
    finally:
        vmc.close()
        code = await daemon.stop()
        pair.close()
    assert code == 0, daemon.log_path.read_text()[-2000:]
    session = vmc.session
    assert session is not None
    assert session.wide
    assert (session.media_id, session.language) == (0x0A0B0C0D, b"de")
    assert c.CurrencyCode.from_word(session.currency) == info.currency_code


def test_a_bad_reader_option_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "vmc.toml"
    config.write_text('[reader]\nlanguage = "rus"\n')
    done = subprocess.run(
        [str(VMCD), "--config", str(config), "--mdb", "pty:///dev/pts/999"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "reader.language: 'rus' is not allowed" in done.stderr


async def test_one_reader_reset_line_per_reset(tmp_path: Path) -> None:
    pair = PtyPair()
    reset = bytes((0x10,))
    for _ in range(20):  # a VMC that kept resetting its silent reader while vmcd started
        pair.master.write_words(vmc_words(reset + bytes((checksum(reset),))))
    daemon = DaemonProcess(pair, tmp_path)
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise()
        await vmc.initialise()  # the VMC starts over: one more RESET
    finally:
        vmc.close()
        code = await daemon.stop()
        pair.close()
    assert code == 0
    resets = [line for line in _log(daemon) if line["event"] == "reader_reset"]
    assert len(resets) == 2, resets


async def test_customer_cancels_log_no_warning(tmp_path: Path) -> None:
    pair = PtyPair()
    daemon = DaemonProcess(pair, tmp_path, local_approval="accept")
    await daemon.start()
    vmc = VmcMaster(pair.master, answer_timeout=0.2)
    try:
        await vmc.initialise()
        customers = Customers(vmc, random.Random(2), poll_period=0.01)
        report = await run_customers(customers, 6, weights={"cancel": 1})
    finally:
        vmc.close()
        code = await daemon.stop()
        pair.close()
    assert code == 0
    assert report.outcomes() == {"cancelled": 6}, report.results
    log = _log(daemon)
    cancels = [line for line in log if line.get("reason") == "cancelled_by_vmc"]
    assert len(cancels) == 6
    assert {line["level"] for line in cancels} == {"info"}
    warnings = [line for line in log if line["level"] in ("warning", "error")]
    assert warnings == []
