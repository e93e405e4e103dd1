"""The drain's own PUBLISH and PUBACK coding (vmc.cloud.puback), read by a separate codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim import mqtt_lite
from vmc.cloud.puback import publish_packet, read_puback

topics = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00+#"), min_size=1)


@pytest.mark.parametrize(("v5", "version"), [(True, mqtt_lite.V5), (False, mqtt_lite.V311)])
@given(topic=topics, mid=st.integers(1, 0xFFFF), payload=st.binary(max_size=20000))
def test_a_publish_reads_back_as_qos_1_with_its_topic_id_and_payload(
    v5: bool, version: int, topic: str, mid: int, payload: bytes
) -> None:
    packet = publish_packet(topic.encode(), mid, payload, v5=v5)
    frames = list(mqtt_lite.Decoder().feed(packet))
    assert len(frames) == 1  # the remaining length covers the packet exactly
    message = mqtt_lite.read_publish(frames[0], version)
    assert (message.topic, message.packet_id, message.payload) == (topic, mid, payload)
    assert (message.qos, message.retain) == (1, False)


@pytest.mark.parametrize(
    ("body", "read"),
    [
        (mqtt_lite.puback(0x1234)[2:], (0x1234, 0)),  # 3.1.1, or 5's success without a code
        (b"\x00\x07\x00", (7, 0)),
        (b"\x00\x07\x10", (7, 0x10)),  # no matching subscribers: still accepted
        (b"\xff\xff\x87\x00", (0xFFFF, 0x87)),  # not authorised, then an empty property list
    ],
)
def test_a_puback_gives_its_packet_id_and_reason(body: bytes, read: tuple[int, int]) -> None:
    assert read_puback(body) == read


def test_a_puback_without_a_packet_id_is_refused() -> None:
    with pytest.raises(ValueError, match="no packet id"):
        read_puback(b"\x01")
