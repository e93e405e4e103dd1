"""Fixtures for end-to-end tests: a private Mosquitto per test, a check for unprivileged runs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from sim.broker import MosquittoBroker
from tests.e2e.console import UNPRIVILEGED


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as running:
        yield running


@pytest.fixture
def unprivileged() -> None:
    """Skip where no user namespace can be made (unshare missing or refused)."""
    try:
        probe = subprocess.run(
            [*UNPRIVILEGED, "true"], check=False, capture_output=True, timeout=30
        )
    except OSError:
        probe = None
    if probe is None or probe.returncode != 0:
        pytest.skip("no user namespace for an unprivileged run (unshare --user)")
