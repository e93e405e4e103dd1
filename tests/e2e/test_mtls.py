"""Mutual TLS with one certificate per device, against Mosquitto set up as docs/cloud-api.md §11
says: a client certificate is required, its CN is the username, and the ACL's ``%u`` patterns
keep each device in its own subtree."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sim.broker import MosquittoBroker
from sim.certs import CertificateAuthority
from tests.e2e.cloud_rig import DEVICE, machine
from tests.waiting import wait_until

MQTT_CONNECT_V311 = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
"""A CONNECT packet (MQTT 3.1.1, clean session, empty client id): what a client says first."""
NOT_AUTHORIZED = 0x87


@pytest.fixture(scope="module")
def mtls_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(mtls=True) as running:
        yield running


def _handshake_then_connect(broker: MosquittoBroker, context: ssl.SSLContext) -> bytes:
    """TLS to the broker, then an MQTT CONNECT: the CONNACK's bytes (b"" if the broker hung up).

    With TLS 1.3 the client's half of the handshake completes before the server has checked
    the client's certificate, so a refusal shows on the first read."""
    with socket.create_connection(("127.0.0.1", broker.listen_port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(MQTT_CONNECT_V311)
                return tls.recv(4)
        except (ssl.SSLError, ConnectionError):
            return b""


def _broker_log_has(broker: MosquittoBroker, text: str, timeout: float = 5.0) -> bool:
    """Whether the broker logs ``text`` within ``timeout`` (it writes its log a moment later)."""
    deadline = time.monotonic() + timeout
    while text not in broker.log_path.read_text():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@dataclass
class _Intruder:
    """A device that holds a valid certificate (m2's) and tries m1's topics: a paho client, so
    the SUBACK and PUBACK reason codes can be read."""

    connected: threading.Event = field(default_factory=threading.Event)
    acks: dict[int, int] = field(default_factory=dict)
    acked: threading.Condition = field(default_factory=threading.Condition)
    received: list[str] = field(default_factory=list)
    subacks: list[list[ReasonCode]] = field(default_factory=list)

    def on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        if not rc.is_failure:
            self.connected.set()

    def on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties
    ) -> None:
        with self.acked:
            self.acks[mid] = rc.value
            self.acked.notify_all()

    def on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        self.subacks.append(codes)

    def on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        self.received.append(message.topic)

    def puback(self, mid: int) -> int:
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, 5)
            return self.acks[mid]


def _intruder(broker: MosquittoBroker, device_id: str) -> tuple[mqtt.Client, _Intruder]:
    seen = _Intruder()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    client.tls_set_context(broker.client_context(device_id))
    client.on_connect = seen.on_connect
    client.on_publish = seen.on_publish
    client.on_message = seen.on_message
    client.on_subscribe = seen.on_subscribe
    assert broker.tls_port is not None
    client.connect("127.0.0.1", broker.tls_port)
    client.loop_start()
    assert seen.connected.wait(5)
    return client, seen


async def test_mtls_device_certificate_full_remote_vend(
    tmp_path: Path, mtls_broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, mtls_broker) as rig:
        await rig.paid_remote_vend()
    assert _broker_log_has(mtls_broker, f"as {DEVICE} (p5, c1, k30, u'{DEVICE}')")


def test_mtls_client_without_certificate_is_refused(mtls_broker: MosquittoBroker) -> None:
    no_cert = mtls_broker.client_context(None)
    assert _handshake_then_connect(mtls_broker, no_cert) == b""
    assert _broker_log_has(mtls_broker, "peer did not return a certificate")
    # Over TLS 1.2 the client sees the refusal in the handshake itself.
    no_cert.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", mtls_broker.listen_port), timeout=5) as raw,
        pytest.raises(ssl.SSLError),
    ):
        no_cert.wrap_socket(raw, server_hostname="127.0.0.1")


def test_mtls_certificate_from_another_ca_is_refused(
    tmp_path: Path, mtls_broker: MosquittoBroker
) -> None:
    stranger = CertificateAuthority(tmp_path / "other-ca", "somebody else's CA")
    issued = stranger.issue(DEVICE)  # the right CN, the wrong issuer
    context = mtls_broker.client_context(None)
    context.load_cert_chain(issued.cert, issued.key)
    assert _handshake_then_connect(mtls_broker, context) == b""
    assert _broker_log_has(mtls_broker, "certificate verify failed")
    # The same CONNECT with the broker's own CA's certificate is answered (CONNACK, rc 0).
    assert _handshake_then_connect(mtls_broker, mtls_broker.client_context(DEVICE)) == (
        b"\x20\x02\x00\x00"
    )


async def test_acl_another_device_can_neither_read_nor_write_m1(
    tmp_path: Path, mtls_broker: MosquittoBroker
) -> None:
    async with machine(tmp_path, mtls_broker) as rig:
        client, m2 = await asyncio.to_thread(_intruder, mtls_broker, "m2")
        try:
            # Read: Mosquitto grants the subscription but delivers nothing the ACL forbids.
            client.subscribe(f"vmc/{DEVICE}/cmd", qos=1)
            client.subscribe("vmc/m2/cmd", qos=1)
            assert await wait_until(lambda: len(m2.subacks) == 2, 5)
            reply = await rig.backend.command(DEVICE, "stock.query")  # m1 got it and answered
            assert reply["ok"]
            await rig.backend.send("m2", {"id": "for-m2", "op": "stock.query"})
            assert await wait_until(lambda: m2.received, 5)
            assert m2.received == ["vmc/m2/cmd"]  # its own command reached it, m1's did not
            # Write: m1's events and replies, forged by m2, are refused (MQTT 5 PUBACK 0x87).
            forged = {"v": 1, "id": "forged-by-m2", "ok": True, "code": None, "message": ""}
            mids = [
                client.publish(f"vmc/{DEVICE}/{leaf}", _cbor(forged), qos=1).mid
                for leaf in ("events", "reply", "status", "state")
            ]
            mine = client.publish("vmc/m2/reply", _cbor({**forged, "id": "m2-own"}), qos=1).mid
            codes = [await asyncio.to_thread(m2.puback, mid) for mid in mids]
            assert codes == [NOT_AUTHORIZED] * 4
            assert await asyncio.to_thread(m2.puback, mine) == 0
            await rig.backend.wait_for(lambda: "m2-own" in rig.backend.replies, 5)
            assert "forged-by-m2" not in rig.backend.replies
            assert rig.backend.status.get(DEVICE) == "online"
        finally:
            client.loop_stop()
            client.disconnect()


def _cbor(body: dict[str, object]) -> bytes:
    return cbor2.dumps(body)
