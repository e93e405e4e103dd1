"""vmcd's console-script entry: a stop is quiet from the first moment, the imports come after.

Importing the daemon (asyncio, structlog, sqlite3) takes a few hundred milliseconds, more on a
Pi; without this, a Ctrl-C in that window prints a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import importlib
import signal
import sys
import types
from typing import Any


def _leave_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def quiet_early_stops() -> None:
    """Until the event loop takes SIGTERM and SIGINT over, either ends vmcd quietly with 0."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _leave_quietly)


def import_structlog_without_rich() -> None:
    """Import structlog as if ``rich`` were not installed.

    structlog imports rich (and pygments) as it loads, for the tracebacks of its console
    renderer: about 60 modules and 5 MB that vmcd, which logs JSON lines, never uses (on a
    terminal it prints plain tracebacks instead). rich stays importable afterwards, for
    whatever does need it (vmctl's tables).
    """
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # import rich: ImportError
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


class _LoadedOnUse(types.ModuleType):
    """Stands in for a module until one of its attributes is first read; the real module is
    imported then, and takes the stand-in's place in ``sys.modules`` and in its package."""

    def __getattr__(self, attr: str) -> Any:
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attr)


def import_on_use(name: str) -> None:
    """Let ``import name`` cost nothing until the module is used.

    For ``urllib.request``: the MQTT client (paho) imports it for a proxy that it uses only
    with PySocks installed, and it brings http.client and the email package along, about
    0.5 MB of vmcd's memory for nothing. Whatever does use it gets the real module.
    """
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    sys.modules[name] = _LoadedOnUse(name)
    if parent:  # ``import urllib.request`` binds the package: its attribute is the stand-in
        setattr(importlib.import_module(parent), child, sys.modules[name])


def vmcd() -> int:
    quiet_early_stops()
    import_structlog_without_rich()
    import_on_use("urllib.request")
    from vmc.daemon import main

    return main()
