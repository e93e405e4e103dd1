"""Planogram and stock end to end: backend, Mosquitto, vmcd on a pty, the sim VMC."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sim.backend import SimBackend
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.samples import PLANOGRAM


def _events(backend: SimBackend, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [
        e
        for e in backend.event_log
        if e["type"] == kind and all(e.get(k) == v for k, v in match.items())
    ]


def _state(backend: SimBackend) -> dict[str, Any]:
    return backend.state.get(DEVICE) or {}


async def _ok(rig: Rig, op: str, **fields: Any) -> dict[str, Any]:
    reply = await rig.backend.command(DEVICE, op, **fields)
    assert reply["ok"], reply
    return reply


async def wait_levels(rig: Rig, expected: dict[str, int]) -> None:
    """Until the journal holds ``expected`` (a vend's stock commit follows the bus answer)."""
    await rig.backend.wait_for(lambda: rig.stock_levels() == expected or None, 10)


async def load_planogram(rig: Rig) -> None:
    reply = await _ok(rig, "planogram.set", planogram=PLANOGRAM)
    assert reply["result"]["planogram_version"] == 1
    await rig.backend.wait_for(lambda: _state(rig.backend).get("planogram_version") == 1, 10)
    await _ok(
        rig, "stock.refill", lines=[{"selection": 1, "amount": 3}, {"selection": 2, "amount": 5}]
    )
    await rig.backend.wait_for(lambda: _state(rig.backend).get("need_loading") is False, 10)


async def test_planogram_vends_take_stock_low_alarm_once_refill_clears(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        await load_planogram(rig)
        assert _events(backend, "planogram.changed") == [_events(backend, "planogram.changed")[0]]
        assert await rig.customers.purchase(item=1) == "vended"
        await wait_levels(rig, {"s:1": 2, "s:2": 5})
        assert (await rig.vmc.cash_sale(rig.vmc.money(150), 1)).is_ack
        await wait_levels(rig, {"s:1": 1, "s:2": 5})
        await backend.wait_for(lambda: _state(backend).get("need_loading") is True, 10)
        await backend.wait_for(lambda: _state(backend).get("last_sale") is not None, 10)
        alarms = _events(backend, "stock.alarm", selection=1)
        # Empty on the new planogram, cleared by the refill, then low ONCE for two vends.
        assert [(a["before"], a["condition"], a["level"]) for a in alarms] == [
            ("ok", "empty", 0),
            ("empty", "ok", 3),
            ("ok", "low", 2),
        ]
        vends = _events(backend, "stock.level", selection=1, reason="vend")
        assert [(v["before"], v["after"]) for v in vends] == [(3, 2), (2, 1)]

        await _ok(rig, "stock.refill", lines=[{"selection": 1, "amount": 5}])
        await backend.wait_for(lambda: len(_events(backend, "stock.alarm", selection=1)) == 4, 10)
        assert _events(backend, "stock.alarm", selection=1)[-1]["condition"] == "ok"
        await backend.wait_for(lambda: _state(backend).get("need_loading") is False, 10)
        assert _state(backend)["last_loading"] is not None
        assert rig.stock_levels() == {"s:1": 6, "s:2": 5}


async def test_stock_inventory_restock_discrepancy_and_duplicate_refill(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        await load_planogram(rig)
        reply = await _ok(
            rig,
            "stock.inventory",
            lines=[{"selection": 1, "level": 4}, {"selection": 2, "level": 0}],
        )
        assert reply["result"]["need_loading"] is True
        assert rig.stock_levels() == {"s:1": 4, "s:2": 0}
        assert _events(backend, "stock.level", selection=1, reason="inventory")

        assert (await rig.vmc.cash_sale(rig.vmc.money(200), 2)).is_ack  # from an empty coil
        short = await backend.wait_for(lambda: _events(backend, "stock.discrepancy") or None, 10)
        assert [(d["kind"], d["selection"], d["missing"]) for d in short] == [("short", 2, 1)]
        assert rig.stock_levels() == {"s:1": 4, "s:2": 0}

        await _ok(rig, "stock.restock")
        assert rig.stock_levels() == {"s:1": 8, "s:2": 5}

        refill = {
            "id": "refill-once",
            "op": "stock.refill",
            "lines": [{"selection": 2, "amount": 1}],
        }
        await backend.send(DEVICE, dict(refill))
        first = await backend.wait_for(lambda: backend.replies.get("refill-once"), 10)
        assert first["ok"]
        backend.replies.pop("refill-once")
        await backend.send(DEVICE, dict(refill))
        again = await backend.wait_for(lambda: backend.replies.get("refill-once"), 10)
        assert again == first  # the stored first reply, byte for byte
        assert rig.stock_levels() == {"s:1": 8, "s:2": 6}

        unknown = await backend.command(
            DEVICE, "stock.refill", lines=[{"selection": 9, "amount": 1}]
        )
        assert (unknown["ok"], unknown["code"]) == (False, "unknown_key")
        too_many = await backend.command(
            DEVICE, "stock.refill", lines=[{"selection": 1, "amount": -99}]
        )
        assert (too_many["ok"], too_many["code"]) == (False, "bad_amount")
        assert rig.stock_levels() == {"s:1": 8, "s:2": 6}


async def test_bad_planogram_refused_naming_the_field_and_restart_keeps_stock(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        early = await backend.command(DEVICE, "stock.restock")
        assert (early["ok"], early["code"]) == (False, "no_planogram")
        await load_planogram(rig)
        bad = {**PLANOGRAM, "version": 2}
        bad["selections"] = [{**PLANOGRAM["selections"][0], "alarm_level": 9}]
        reply = await backend.command(DEVICE, "planogram.set", planogram=bad)
        assert (reply["ok"], reply["code"]) == (False, "bad_field")
        assert reply["message"].startswith("planogram.selections[0].alarm_level:")
        assert _state(backend)["planogram_version"] == 1
        assert rig.stock_levels() == {"s:1": 3, "s:2": 5}
        for key in ("planogram_version", "need_loading", "last_loading", "last_sale"):
            assert key in _state(backend)

        await rig.daemon.stop()
        backend.state.pop(DEVICE, None)
        await rig.restart_daemon()
        await backend.wait_for(lambda: _state(backend).get("planogram_version") == 1, 15)
        assert _state(backend)["need_loading"] is False
        assert rig.stock_levels() == {"s:1": 3, "s:2": 5}
        assert (await rig.vmc.cash_sale(rig.vmc.money(150), 1)).is_ack
        await wait_levels(rig, {"s:1": 2, "s:2": 5})
        await backend.wait_for(lambda: _events(backend, "stock.alarm", condition="low") or None, 10)


async def test_recipe_vend_takes_its_ingredients_stock(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    coffee: dict[str, Any] = {
        "version": 7,
        "ingredients": [
            {"id": "beans", "unit": "g", "capacity": 1000, "par_level": 800, "alarm_level": 10},
            {"id": "cup", "capacity": 100, "par_level": 80, "alarm_level": 1},
        ],
        "products": [
            {
                "id": "espresso",
                "recipe": [
                    {"ingredient": "beans", "amount": 7},
                    {"ingredient": "cup", "amount": 1},
                ],
            }
        ],
        "selections": [{"number": 4, "product": "espresso", "price": 120}],
    }
    async with machine(tmp_path, broker) as rig:
        backend = rig.backend
        await _ok(rig, "planogram.set", planogram=coffee)
        loaded = await _ok(
            rig,
            "stock.refill",
            lines=[{"ingredient": "beans", "amount": 20}, {"ingredient": "cup", "amount": 2}],
        )
        assert loaded["result"]["need_loading"] is False
        selection = await backend.command(
            DEVICE, "stock.refill", lines=[{"selection": 4, "amount": 1}]
        )
        assert (selection["ok"], selection["code"]) == (False, "unknown_key")
        late = await backend.command(DEVICE, "stock.restock", expires=time.time() - 10)
        assert (late["ok"], late["code"]) == (False, "expired")
        assert await rig.customers.purchase(item=4) == "vended"
        await wait_levels(rig, {"i:beans": 13, "i:cup": 1})
        await backend.wait_for(
            lambda: _events(backend, "stock.alarm", ingredient="cup", condition="low") or None, 10
        )
        cup = _events(backend, "stock.alarm", ingredient="cup")
        assert [(a["before"], a["condition"], a["level"]) for a in cup] == [
            ("ok", "empty", 0),
            ("empty", "ok", 2),
            ("ok", "low", 1),
        ]
        await _ok(rig, "stock.restock")
        assert rig.stock_levels() == {"i:beans": 800, "i:cup": 80}
