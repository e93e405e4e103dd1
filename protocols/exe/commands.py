"""The Executive bytes vmc relies on, each with the public source it comes from.

The MEI specification ("MEI 20 mA Protocol A Specification", 10102-000304001-PS) is not
published; only its table of contents is. Every value here is taken from the one open
implementation that talks to a real machine, SoftJourn/vending-control (Java, on a Raspberry
Pi): ``src/main/java/com/softjourn/executive/Executive.java`` and its test
``ExecutiveTest.java``. What that code does not show (the STATUS reply's bits, the 9th bit,
the line speed, AUDIT and later commands) is configuration, see :class:`ExeSettings` in
:mod:`protocols.exe.master` and docs/executive.md.
"""

from __future__ import annotations

from enum import IntEnum


class Command(IntEnum):
    """Master -> VMC command bytes: 0x3n, n the command number of the spec's table of contents
    ("Command 1 Status, Command 2 Credit, Command 3 Vend"). Source: Executive.java's
    STATUS_REQUEST, CREDIT_REQUEST and VEND_REQUEST (0b0011_0001, _0010, _0011)."""

    STATUS = 0x31
    CREDIT = 0x32
    VEND = 0x33


NO_VEND_REQUEST = 0xFE
"""CREDIT reply: no selection is waiting. Any other byte (PNAK aside) is a selection asking to
be vended. Source: Executive.credit() (``resp == 254``) and ExecutiveTest.creditNoVendRequest."""

VEND_SUCCESS = 0x00
"""VEND reply: the product was vended; any other byte (PNAK aside) is a failed vend. Source:
Executive.vend() (``resp == 0 ? SUCCESS : ERROR``)."""

STATUS_IDLE = 0x00
"""STATUS reply with no flag set (SoftJourn's ``Status.ACK``). Which bits mean "inhibited" or
"free vend" is not settled (two revisions of that code disagree), so vmc reads them through
configurable masks only."""

PNAK = 0xFF
"""VMC -> master: the command was not received correctly; the master sends it again. Named in
the spec's table of contents ("PNAK Reply"); SoftJourn resends up to 5 times (its javadoc: the
reply when the "parity bit doesn't match")."""
