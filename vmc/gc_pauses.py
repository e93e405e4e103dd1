"""The garbage collector's pauses, kept off a remote vend's path.

CPython collects its youngest objects whenever 700 more have been made than freed, wherever
the daemon then is: in the cloud bench that was every seven vends or so, about 0.3 ms each
on the development machine, now and then a second generation for about 1 ms, and a full
collection goes through everything start-up made (the imports, the configuration, the
clients): tens of ms. So vmcd freezes what start-up made (full collections leave it alone),
its ticker collects the young generations while nothing is open, and the automatic
collection waits for :data:`YOUNG_LIMIT` objects: a backstop for a daemon that is never
idle at a tick, no longer a pause that falls in the middle of a vend.
"""

from __future__ import annotations

import gc

YOUNG_AT_IDLE = 50
"""Objects in the youngest generation worth an idle collection."""
YOUNG_LIMIT = 10_000
"""Objects in the youngest generation before the automatic collection (CPython's: 700). In
the cloud bench a vend leaves about 130; a tick comes every 0.1 s."""
MIDDLE_AT_IDLE = 5
"""Young collections since the middle generation's last (the automatic one: 10)."""


def take_over() -> None:
    """Move what exists now out of the collector's sight (collected once, never again) and
    leave the young generations to :func:`collect_while_idle`."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_LIMIT, middle, old)


def collect_while_idle(busy: bool) -> None:
    """A young collection now, while ``busy`` is False and there is something to look at."""
    if busy:
        return
    young, middle, _ = gc.get_count()
    if middle >= MIDDLE_AT_IDLE:
        gc.collect(1)
    elif young >= YOUNG_AT_IDLE:
        gc.collect(0)
