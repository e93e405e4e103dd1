"""CRC-16/ARC (poly 0x8005 reflected, init 0, no final XOR), the CRC of EVA-DTS.

The same algorithm checks DEX/UCS blocks and handshakes, Enhanced DDCMP frames and the G85
segment of an audit (EVA-DTS 6.2 §2, §3, §4). Check value: ``crc16_arc(b"123456789") == 0xBB3D``.
"""

from __future__ import annotations


def _table() -> tuple[int, ...]:
    rows = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        rows.append(crc)
    return tuple(rows)


_TABLE = _table()


def crc16_arc(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC of ``data``, continuing from ``crc`` (0 to start)."""
    table = _TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc
