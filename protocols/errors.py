"""The one exception tree of vmc.

Protocol cores raise these; the daemon and the CLI catch them. ``LocalProtocolError`` means
we broke a protocol, ``RemoteProtocolError`` means the peer did, so a log line always says
whose fault a failure was.
"""

from __future__ import annotations


class VmcError(Exception):
    """Base of every error vmc raises on purpose."""


class ProtocolError(VmcError):
    """A protocol rule was broken."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow in this state."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class MoneyError(VmcError):
    """An amount cannot be carried in the requested unit or width."""


class ConfigError(VmcError):
    """A configuration value was refused; the message names the key and what is allowed."""


class PortError(VmcError):
    """A serial port could not be opened or configured."""


class ParseError(VmcError):
    """Input could not be parsed; the message says where and why."""
