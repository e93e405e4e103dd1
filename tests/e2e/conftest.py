"""Fixtures for end-to-end tests: a private Mosquitto per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sim.broker import MosquittoBroker


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as running:
        yield running
