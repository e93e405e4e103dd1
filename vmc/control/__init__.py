"""The control socket: how ``vmctl`` talks to a running ``vmcd``.

``protocol`` (the line format, sans-I/O), ``server`` (vmcd's end: the socket, the command
registry, the connections), ``commands`` (what vmcd serves), ``status`` (the status codes'
rules) and ``client`` (vmctl's end). The protocol is documented in docs/cli.md.
"""
