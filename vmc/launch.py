"""vmcd's console-script entry: a stop is quiet from the first moment, the imports come after.

Importing the daemon (asyncio, aiomqtt, structlog, sqlite3) takes a few hundred milliseconds,
more on a Pi; without this, a Ctrl-C in that window prints a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import signal


def _leave_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def quiet_early_stops() -> None:
    """Until the event loop takes SIGTERM and SIGINT over, either ends vmcd quietly with 0."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _leave_quietly)


def vmcd() -> int:
    quiet_early_stops()
    from vmc.daemon import main

    return main()
