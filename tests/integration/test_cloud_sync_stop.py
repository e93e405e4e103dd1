"""A stop that comes as the connection is lost still stops the cloud link.

The session's tasks all fail at once when the broker goes; if vmcd's stop cancels the link in
the same moment, Python 3.11's TaskGroup raises the tasks' errors and drops the cancellation
("other errors have priority"). The reconnect loop took those errors for a lost connection and
went on reconnecting for ever: a SIGTERM never ended vmcd (seen when a test's broker and
daemon were killed together). vmcd now sets ``closing`` as it stops, and the loop ends on it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from vmc.cloud.sync import CloudSync, MqttSettings
from vmc.journal import Journal


async def test_a_cancel_a_task_group_drops_for_a_lost_connection_still_stops_the_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    settings = MqttSettings(url="mqtt://127.0.0.1:9", device_id="m1")
    sync = CloudSync(settings, journal, lambda _payload: None, lambda: {})
    lose = asyncio.Event()
    sessions = 0

    async def lost_as_it_is_cancelled() -> None:
        """A session whose task fails as the connection is lost (as ``_session`` does)."""
        nonlocal sessions
        sessions += 1

        async def task() -> None:
            await lose.wait()
            raise aiomqtt.MqttError("Disconnected during message iteration")

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(task())
        except BaseExceptionGroup as lost:
            raise aiomqtt.MqttError("lost") from lost

    monkeypatch.setattr(sync, "_session", lost_as_it_is_cancelled)
    link = asyncio.create_task(sync.run())
    try:
        await asyncio.sleep(0.05)  # the session runs and waits
        sync.closing = True  # vmcd stops ...
        lose.set()  # ... the broker goes ...
        link.cancel()  # ... and vmcd's stop cancels the link, in the same loop turn
        await asyncio.wait_for(link, 5)  # the cancellation is lost, the loop ends all the same
        assert sessions == 1
    finally:
        if not link.done():
            link.cancel()
        journal.close()
