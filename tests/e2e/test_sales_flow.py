"""Sales reports end to end: vends over Mosquitto, then `sales.query` from the journal."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, machine
from tests.e2e.test_stock_flow import load_planogram, wait_levels

ZONE = "Pacific/Kiritimati"  # UTC+14: its local day is rarely the UTC one
VMCD = Path(sys.executable).parent / "vmcd"


async def test_sales_query_reports_vends_per_slot_with_stock(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = tmp_path / "vmc.toml"
    config.write_text(f'[daemon]\ntimezone = "{ZONE}"\nsales_retention_days = 30\n')
    async with machine(tmp_path, broker, extra=("--config", str(config))) as rig:
        await load_planogram(rig)
        first = dt.datetime.now(ZoneInfo(ZONE)).date()  # the vends may straddle local midnight
        assert await rig.customers.purchase(item=1) == "vended"
        await wait_levels(rig, {"s:1": 2, "s:2": 5})
        assert (await rig.vmc.cash_sale(rig.vmc.money(200), 2)).is_ack
        await wait_levels(rig, {"s:1": 2, "s:2": 4})

        today = dt.datetime.now(ZoneInfo(ZONE)).date()
        reply = await rig.backend.command(
            DEVICE, "sales.query", **{"from": first.isoformat(), "to": today.isoformat()}
        )
        assert reply["ok"], reply
        result = reply["result"]
        assert (result["timezone"], result["from"], result["to"]) == (
            ZONE,
            *[today.isoformat()] * 2,
        )
        slots = {s["slotId"]: s for s in result["slots"]}
        assert set(slots) == {1, 2}
        bar, chips = slots[1], slots[2]
        assert (bar["product"], bar["price"], bar["capacity"]) == ("bar", 150, 10)
        assert (bar["itemsLeft"], bar["salesSinceRefill"], bar["sales"]) == (2, 1, 1)
        assert (chips["itemsLeft"], chips["sales"], chips["cash"]) == (4, 1, 200)
        assert result["payment"]["cash"] == {"count": 1, "amount": 200}
        assert result["payment"]["cashless"]["count"] == 1
        assert result["vend_type"]["paid"]["count"] == 2
        assert result["total"]["count"] == sum(h["count"] for h in result["hourly"]) == 2
        assert result["daily"][-1]["date"] == today.isoformat()
        assert sum(d["amount"] for d in result["daily"]) == result["total"]["amount"]

        tomorrow = (today + dt.timedelta(days=1)).isoformat()
        one = await rig.backend.command(
            DEVICE, "sales.query", selection=2, **{"from": tomorrow, "to": tomorrow}
        )
        assert [s["sales"] for s in one["result"]["slots"]] == [0]
        assert one["result"]["total"] == {"count": 0, "amount": 0}

        bad = await rig.backend.command(
            DEVICE, "sales.query", **{"from": tomorrow, "to": today.isoformat()}
        )
        assert (bad["ok"], bad["code"]) == (False, "bad_field")
        assert bad["message"].startswith("to: ")


def test_sales_config_bad_timezone_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "vmc.toml"
    config.write_text('[daemon]\ntimezone = "Mars/Olympus"\n')
    run = subprocess.run(
        [str(VMCD), "--config", str(config), "--mdb", "loop://1", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert "daemon.timezone" in run.stderr
