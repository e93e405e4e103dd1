"""EVA-DTS audits (the report a DEX/UCS or DDCMP read carries): parser, writer, deltas.

Sans-I/O: functions of bytes and records, no files and no clock. ``parse`` reads an audit,
``Audit.to_json`` summarises it, ``delta`` compares two reads of one machine, ``write`` (with
``make_audit`` for a machine's own counters) produces one.
"""

from protocols.evadts.deltas import AuditDelta, delta
from protocols.evadts.parser import (
    NoAuditError,
    choose,
    g85_crc,
    parse,
    parse_all,
    tube_contents,
)
from protocols.evadts.records import Audit, CrcStatus, Product, Sales
from protocols.evadts.writer import AuditWriteError, make_audit, write

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
