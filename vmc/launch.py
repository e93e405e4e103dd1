"""vmcd's console-script entry: a stop is quiet from the first moment, the imports come after.

Importing the daemon (asyncio, structlog, sqlite3) takes a few hundred milliseconds, more on a
Pi; without this, a Ctrl-C in that window prints a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import signal
import sys


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


def vmcd() -> int:
    quiet_early_stops()
    import_structlog_without_rich()
    from vmc.daemon import main

    return main()
