"""Signed commands end to end: vmcd trusts the backend's key only; a paid signed by it vends,
a forged paid (another key, the real transaction, even the real command id) is refused with
``bad_signature``, reported as ``security.bad_signature``, and never dispenses."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sim.backend import Policy
from sim.broker import MosquittoBroker
from tests.e2e.cloud_rig import DEVICE, Rig, machine
from tests.e2e.console import vmctl
from tests.e2e.test_vmctl_socket import one_line
from vmc.cloud import signing

FORGER = Ed25519PrivateKey.generate()


async def _requested(rig: Rig, txn_id: str) -> int:
    """Until the customer's selection reached the backend; its price."""

    def seen() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in rig.backend.event_log
                if e["type"] == "txn.request" and e["txn_id"] == txn_id
            ),
            None,
        )

    request: dict[str, Any] = await rig.backend.wait_for(seen, 10)
    return int(request["price"])


async def _forge_paid(rig: Rig, cmd_id: str, txn_id: str, price: int) -> dict[str, Any]:
    """A paid for the real transaction, signed by a key vmcd does not trust; its reply."""
    body = {"v": 1, "id": cmd_id, "op": "paid", "expires": time.time() + 30}
    await rig.backend.publish(
        DEVICE, signing.sign(body | {"txn_id": txn_id, "amount": price}, FORGER)
    )
    reply: dict[str, Any] = await rig.backend.wait_for(lambda: rig.backend.replies.get(cmd_id), 10)
    return reply


def _approvals(rig: Rig) -> int:
    return (rig.daemon.state_dir / "vmcd.log").read_text().count('"vend_approved"')


async def test_signed_paid_vends_and_a_forged_paid_is_refused_with_bad_signature(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    key = Ed25519PrivateKey.generate()
    async with machine(tmp_path, broker, policy=Policy.SILENT, signing_key=key) as rig:
        backend = rig.backend
        # 1. A forged paid under the id the backend will use: refused, and the id stays free.
        txn_id = await backend.lock(DEVICE, "alice")
        customer = asyncio.create_task(rig.customers.run("purchase", 1))
        price = await _requested(rig, txn_id)
        forged = await _forge_paid(rig, "paid-1", txn_id, price)
        assert (forged["ok"], forged["code"]) == (False, "bad_signature")
        del backend.replies["paid-1"]
        await backend.send(
            DEVICE, {"id": "paid-1", "op": "paid", "txn_id": txn_id, "amount": price}
        )
        real = await backend.wait_for(lambda: backend.replies.get("paid-1"), 10)
        assert real["ok"], real
        outcome = await customer
        assert outcome.outcome == "vended"
        assert (await backend.wait_done(txn_id)).result == "success"

        # 2. A forged paid alone: the selection is never approved and the VMC is denied.
        second = await backend.lock(DEVICE, "alice")
        customer = asyncio.create_task(rig.customers.run("purchase", 2))
        price = await _requested(rig, second)
        forged = await _forge_paid(rig, "paid-2", second, price)
        assert forged["code"] == "bad_signature"
        outcome = await customer
        assert outcome.outcome == "denied"
        entry = await backend.wait_done(second)
        assert entry.result is None
        assert "expired" in entry.states

        events = [e for e in backend.event_log if e["type"] == "security.bad_signature"]
        assert [(e["command_id"], e["op"], e["reason"], e["kid"]) for e in events] == [
            ("paid-1", "paid", "unknown_key", signing.key_id(FORGER.public_key())),
            ("paid-2", "paid", "unknown_key", signing.key_id(FORGER.public_key())),
        ]
        vends = [e for e in backend.event_log if e["type"] == "txn.vend"]
        assert [v["txn_id"] for v in vends] == [txn_id]
        assert _approvals(rig) == 1
        assert sum(row.cashless_vends for row in rig.vmc.sales.selections.values()) == 1


async def test_config_check_reports_bad_signature_keys(tmp_path: Path) -> None:
    path = tmp_path / "vmc.toml"
    head = (
        f'[mdb]\nport = "uart:///dev/ttyAMA0"\n[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        '[cloud]\nurl = "mqtt://127.0.0.1:1883"\ndevice_id = "m1"\n'
    )
    keys = [signing.public_text(k.public_key()) for k in (FORGER, Ed25519PrivateKey.generate())]
    path.write_text(head + f'command_keys = ["{keys[0]}", "{keys[1]}"]\n')
    code, out, err = await vmctl("config", "check", str(path))
    assert (code, err) == (0, ""), err
    assert "cloud mqtt://127.0.0.1:1883 as m1, signed commands (2 keys);" in out
    path.write_text(head + f'command_keys = ["{keys[0]}", "{keys[1][:-8]}"]\n')
    one_line(*await vmctl("config", "check", str(path)), 2, "cloud.command_keys[1]: ")


async def test_device_signature_on_every_event_lets_the_backend_refuse_a_forged_booking(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """vmcd signs its events and replies with its device key: a remote vend's all verify, and
    a txn.vend someone else publishes on the device's topic is refused by the backend."""
    async with machine(tmp_path, broker, device_key=True) as rig:
        backend = rig.backend
        txn_id = await backend.lock(DEVICE, "alice")
        outcome = await rig.customers.run("purchase", 1)
        assert outcome.outcome == "vended"
        entry = await backend.wait_done(txn_id, 10)
        assert entry.result == "success"
        assert backend.books.verified >= 4  # lock's reply, txn.request, paid's reply, txn.vend
        assert backend.books.unverified == []
        forged = {"v": 1, "id": "forged-1", "seq": 1, "type": "txn.vend", "at": time.time(),
                  "txn_id": "t-forged", "result": "success", "amount": 150}  # fmt: skip
        async with aiomqtt.Client("127.0.0.1", broker.port) as intruder:
            payload = cbor2.dumps(signing.sign(forged, FORGER))
            await intruder.publish(f"vmc/{DEVICE}/events", payload, qos=1)
        await backend.wait_for(lambda: backend.books.unverified or None, 10)
        assert backend.books.unverified == [f"{DEVICE} events txn.vend"]
        assert "t-forged" not in backend.books.entries


async def test_vmctl_keygen_writes_a_device_signature_key_once(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    code, out, err = await vmctl("keygen", str(path), "--json")
    assert (code, err) == (0, ""), err
    made = json.loads(out)
    key = signing.DeviceKey.load(str(path))
    assert made == {"file": str(path), "public_key": key.public_text, "kid": key.kid}
    one_line(*await vmctl("keygen", str(path)), 2, f"{path}: exists")
    config = tmp_path / "vmc.toml"
    config.write_text(
        f'[mdb]\nport = "uart:///dev/ttyAMA0"\n[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        '[cloud]\nurl = "mqtt://127.0.0.1:1883"\ndevice_id = "m1"\n'
        f'device_key_file = "{path}"\n'
    )
    code, out, err = await vmctl("config", "check", str(config))
    assert (code, err) == (0, ""), err
    assert "as m1, signed events;" in out
    path.write_text("garbage\n")
    one_line(*await vmctl("config", "check", str(config)), 2, "cloud.device_key_file: ")
