"""EVA-DTS audits (the report a DEX/UCS or DDCMP read carries): parser, writer, deltas.

Sans-I/O: functions of bytes and records, no files and no clock. ``parse`` reads an audit,
``Audit.to_json`` summarises it, ``delta`` compares two reads of one machine, ``write`` (with
``make_audit`` for a machine's own counters) produces one. The deltas and the writer are
imported on first use: a command that only parses (``vmctl dex parse``) starts without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from protocols.evadts.parser import (
    NoAuditError,
    choose,
    g85_crc,
    parse,
    parse_all,
    tube_contents,
)
from protocols.evadts.records import Audit, CrcStatus, Product, Sales

if TYPE_CHECKING:
    from protocols.evadts.deltas import AuditDelta, delta
    from protocols.evadts.writer import AuditWriteError, make_audit, write

_ON_FIRST_USE = {
    "AuditDelta": "deltas",
    "delta": "deltas",
    "AuditWriteError": "writer",
    "make_audit": "writer",
    "write": "writer",
}


def __getattr__(name: str) -> Any:
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "Audit",
    "AuditDelta",
    "AuditWriteError",
    "CrcStatus",
    "NoAuditError",
    "Product",
    "Sales",
    "choose",
    "delta",
    "g85_crc",
    "make_audit",
    "parse",
    "parse_all",
    "tube_contents",
    "write",
]
