"""MDB bus traces as text, in the format of ``shared/corpus/mdb/`` (sans-I/O).

One block per line: ``VMC:`` or ``PER:``, then each 9-bit word as three hex digits (mode bit,
then the byte), then an optional ``# comment``. The simulator's recorder and replayer
(:mod:`sim.trace`, :mod:`sim.replay`) and the daemon's bus monitor (``vmctl mdb record``) all
read and write this one format, so a field capture can be played back on the bench.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from protocols.errors import ParseError
from protocols.mdb.words import Word


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
