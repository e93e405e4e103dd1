"""Recording MDB bus traces from the simulated VMC, in the format of ``shared/corpus/mdb/``.

The format itself (lines, words, parsing, pairing exchanges) is
:mod:`protocols.mdb.trace`, shared with the daemon's bus monitor; it is re-exported here for
the simulator's callers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from protocols.mdb.trace import Direction, TraceLine, exchanges, parse_trace, parse_word
from protocols.mdb.words import Word
from sim import StartError

__all__ = [
    "Direction",
    "TraceLine",
    "TraceRecorder",
    "exchanges",
    "parse_trace",
    "parse_word",
    "read_trace",
    "recording",
]


def read_trace(path: Path) -> list[TraceLine]:
    return parse_trace(path.read_text(encoding="utf-8"))


class TraceRecorder:
    """Collects exchanged blocks and writes them in the trace format."""

    def __init__(self) -> None:
        self.lines: list[TraceLine] = []

    def add(self, direction: Direction, words: Iterable[Word], comment: str = "") -> None:
        self.lines.append(TraceLine(direction, tuple(words), comment))

    def text(self) -> str:
        return "".join(line.format() + "\n" for line in self.lines)


@contextlib.contextmanager
def recording(path: Path | None) -> Iterator[TraceRecorder | None]:
    """A recorder whose trace goes to ``path`` when the run ends, however it ends.

    The file is opened at once, so a path that cannot be written stops the run before it
    starts (StartError) rather than losing the trace at its end. None: nothing is recorded.
    """
    if path is None:
        yield None
        return
    try:
        handle = path.open("w", encoding="utf-8")
    except OSError as exc:
        raise StartError(f"--record {path}: cannot write: {exc.strerror}") from exc
    recorder = TraceRecorder()
    with handle:
        try:
            yield recorder
        finally:
            handle.write(recorder.text())
