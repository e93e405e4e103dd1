"""MDB bus traces in the text format of ``shared/corpus/mdb/``.

One block per line: ``VMC:`` or ``PER:``, then each 9-bit word as three hex digits (mode bit,
then the byte), then an optional ``# comment``. The recorder writes this format and the
replayer reads it, so a field capture can be played back on the bench.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from protocols.errors import ParseError
from protocols.mdb.words import Word
from sim import StartError


class Direction(Enum):
    VMC = "VMC"
    PER = "PER"


@dataclass(frozen=True, slots=True)
class TraceLine:
    direction: Direction
    words: tuple[Word, ...]
    comment: str = ""
    lineno: int = 0

    @property
    def data(self) -> bytes:
        return bytes(w.value for w in self.words)

    def format(self) -> str:
        body = " ".join(str(w) for w in self.words)
        text = f"{self.direction.value}: {body}"
        return f"{text}   # {self.comment}" if self.comment else text


def parse_word(token: str) -> Word:
    if len(token) != 3 or token[0] not in "01":
        raise ValueError(token)
    return Word(int(token[1:], 16), mode=token[0] == "1")


def parse_trace(text: str) -> list[TraceLine]:
    """Parse a trace; a malformed line raises :class:`ParseError` naming its number."""
    lines: list[TraceLine] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        body, _, comment = raw.partition("#")
        body = body.strip()
        if not body:
            continue
        head, sep, rest = body.partition(":")
        try:
            direction = Direction(head.strip())
            if not sep:
                raise ValueError(head)
            words = tuple(parse_word(t) for t in rest.split())
        except ValueError as exc:
            raise ParseError(f"line {lineno}: not a trace line: {raw.strip()!r}") from exc
        if not words:
            raise ParseError(f"line {lineno}: a block needs at least one word")
        lines.append(TraceLine(direction, words, comment.strip(), lineno))
    return lines


def read_trace(path: Path) -> list[TraceLine]:
    return parse_trace(path.read_text(encoding="utf-8"))


def exchanges(lines: Iterable[TraceLine]) -> Iterator[tuple[TraceLine, TraceLine | None]]:
    """Pair every VMC line with the PER line that answers it (None: the trace shows none)."""
    pending: TraceLine | None = None
    for line in lines:
        if line.direction is Direction.VMC:
            if pending is not None:
                yield pending, None
            pending = line
        elif pending is not None:
            yield pending, line
            pending = None
    if pending is not None:
        yield pending, None


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
