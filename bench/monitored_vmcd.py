#!/usr/bin/env python3
"""vmcd with one bus monitor listener inside it, for ``bench/mdb_latency.py --monitor``.

It is the real daemon (:func:`vmc.daemon.main`) whose bus supervisor has a listener from the
start: every frame is formatted as ``vmctl mdb monitor`` shows it (a human line and JSON) and
written as ``vmctl mdb record`` keeps it (trace lines), all to ``/dev/null``. That is the work a
technician's monitor makes the daemon and the bus process do, less the control socket, which
this benchmark leaves to its own phase. It logs ``bench_monitor`` (frames, dropped) at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from vmc import daemon  # noqa: E402
from vmc.monitor import TraceWriter, format_line, to_json  # noqa: E402
from vmc.services.bus import BusSupervisor  # noqa: E402

log = structlog.get_logger("bench.monitor")


class ListenedSupervisor(BusSupervisor):
    """The bus supervisor with one monitor listener for as long as it runs."""

    async def run(self) -> None:
        listening = asyncio.create_task(self._consume())
        try:
            await super().run()
        finally:
            listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listening

    async def _consume(self) -> None:
        frames = dropped = 0
        with open(os.devnull, "w", encoding="utf-8") as sink:
            writer = TraceWriter(sink)
            try:
                async with self.monitor() as listener:
                    async for frame in listener:
                        sink.write(format_line(frame) + "\n")
                        sink.write(json.dumps(to_json(frame)) + "\n")
                        writer.write(frame)
                        frames += 1
                        dropped += frame.dropped
            finally:
                log.info("bench_monitor", frames=frames, dropped=dropped)


if __name__ == "__main__":
    daemon.BusSupervisor = ListenedSupervisor  # type: ignore[attr-defined]
    sys.exit(daemon.main())
