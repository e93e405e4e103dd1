"""structlog set-up: JSON lines for journald and files, readable lines on a terminal.

Secrets never reach a log: any key that looks like one is masked by :func:`redact`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, TextIO

import structlog

SECRET_KEYS = ("password", "secret", "token", "key_file", "passphrase")


MASK = "***"


@functools.lru_cache(maxsize=1024)
def is_secret(key: str) -> bool:
    """Whether a value under this key may be a secret (logs and reports mask it). Remembered:
    every log line asks it of each of its keys, and the keys are a small set."""
    return any(part in key.lower() for part in SECRET_KEYS)


def redact(_logger: object, _name: str, event: MutableMapping[str, Any]) -> Any:
    for key in event:
        if is_secret(key):
            event[key] = MASK
    return event


def soon(emit: Callable[..., object], *args: Any) -> None:
    """``emit(*args)`` (log lines) once the event loop has run the callbacks ready now: lines
    written after a decision must not hold back the task it woke (the outbox's drain, which
    publishes a ``txn.request``). Without a running loop, at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        emit(*args)
        return
    loop.call_soon(emit, *args)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    renderer: Any
    if out.isatty():
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
