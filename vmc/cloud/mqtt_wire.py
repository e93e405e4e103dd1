"""The MQTT fixed header's Remaining Length (MQTT 5 §1.5.5, the same in 3.1.1): the one
piece of MQTT's encoding that vmc writes by hand in more than one place (the outbox drain's
own PUBLISH packets, the simulator's light client), with no MQTT library behind it."""

from __future__ import annotations


def remaining_length(n: int) -> bytes:
    """``n`` as a variable byte integer: seven bits a byte, the high bit set on all but the
    last."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
