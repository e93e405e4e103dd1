"""The fleet's pieces without I/O: the minimal MQTT codec, and one machine's remote vend."""

from __future__ import annotations

import itertools
from typing import Any

import cbor2
from hypothesis import given
from hypothesis import strategies as st

from sim.fleet_machine import PRICE, FleetMachine, Outgoing
from sim.mqtt_lite import (
    V5,
    V311,
    Decoder,
    Frame,
    Packet,
    Will,
    connect,
    puback,
    publish,
    read_publish,
    subscribe,
)

NOW = 1_767_261_600.0


def _frames(data: bytes, cut: int) -> list[Frame]:
    decoder = Decoder()
    return [*decoder.feed(data[:cut]), *decoder.feed(data[cut:])]


@given(
    topic=st.text(min_size=1, max_size=80).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=400),
    version=st.sampled_from([V311, V5]),
    retain=st.booleans(),
    cut=st.integers(min_value=0, max_value=600),
)
def test_a_publish_reads_back_however_the_bytes_are_split(
    topic: str, payload: bytes, version: int, retain: bool, cut: int
) -> None:
    data = publish(topic, payload, qos=1, packet_id=7, retain=retain, version=version)
    data += puback(7)
    frames = _frames(data, min(cut, len(data)))
    assert [f.kind for f in frames] == [Packet.PUBLISH, Packet.PUBACK]
    message = read_publish(frames[0], version)
    assert (message.topic, message.payload, message.qos) == (topic, payload, 1)
    assert (message.packet_id, message.retain) == (7, retain)


def test_a_long_publish_has_a_multi_byte_length() -> None:
    payload = bytes(20_000)
    frames = list(
        Decoder().feed(publish("t", payload, qos=0, packet_id=None, retain=False, version=V311))
    )
    assert read_publish(frames[0], V311).payload == payload


def test_connect_and_subscribe_bytes() -> None:
    will = Will("vmc/m1/status", b"\xa1", qos=1, retain=True)
    data = connect("m1", version=V311, keepalive=30, will=will)
    # CONNECT, MQTT level 4, flags: clean + will + will QoS 1 + will retain
    assert data[0] == 0x10
    assert data[2:12] == b"\x00\x04MQTT\x04\x2e\x00\x1e"
    assert subscribe(3, "vmc/m1/cmd", 1, version=V5)[:5] == b"\x82\x10\x00\x03\x00"


def _command(op: str, **fields: object) -> bytes:
    return cbor2.dumps({"v": 1, "id": f"{op}-1", "op": op, "expires": NOW + 30, **fields})


def _bodies(out: list[Outgoing]) -> list[tuple[str, dict[str, Any]]]:
    return [(o.topic.rsplit("/", 1)[1], cbor2.loads(o.payload)) for o in out]


def test_a_remote_vend_through_the_engine() -> None:
    ids = itertools.count(1)
    machine = FleetMachine("m1", new_id=lambda: f"txn{next(ids)}")
    machine.start(NOW)
    out, changed = machine.on_command(_command("lock", ref="alice"), NOW)
    (reply, locked), (request, event) = _bodies(out)
    assert changed
    assert (reply, locked["ok"], locked["result"]["txn_id"]) == ("reply", True, "txn1")
    assert (request, event["type"], event["price"]) == ("events", "txn.request", PRICE)
    out, _ = machine.on_command(_command("paid", txn_id="txn1", amount=PRICE), NOW + 0.01)
    (_, approving), (_, vend) = _bodies(out)
    assert approving["result"]["state"] == "approving"
    assert (vend["type"], vend["result"], vend["amount"]) == ("txn.vend", "success", PRICE)
    assert vend["seq"] > event["seq"]
    assert machine.vends == 1
    assert machine.engine.txn is None
    state = cbor2.loads(machine.state(NOW).payload)
    assert (state["reader"], state["txn"]) == ("enabled", None)


def test_a_repeated_command_gets_its_first_reply_and_other_ops_are_refused() -> None:
    machine = FleetMachine("m1")
    machine.start(NOW)
    first, _ = machine.on_command(_command("lock"), NOW)
    again, changed = machine.on_command(_command("lock"), NOW + 1)
    assert again == first[:1]
    assert not changed
    out, _ = machine.on_command(_command("status.check"), NOW)
    ((_, refused),) = _bodies(out)
    assert (refused["ok"], refused["code"]) == (False, "unknown_op")
    out, _ = machine.on_command(b"\xff", NOW)
    assert _bodies(out)[0][1]["code"] == "malformed"


def test_an_unanswered_request_expires_on_tick() -> None:
    machine = FleetMachine("m1")
    machine.start(NOW)
    machine.on_command(_command("lock"), NOW)
    out, changed = machine.tick(NOW + 10)
    ((_, status),) = _bodies(out)
    assert changed
    assert (status["type"], status["state"]) == ("txn.status", "expired")
    assert machine.engine.txn is None
