"""Shared test set-up: the Hypothesis profile, the corpus line in the header, a recorded trace."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.corpus import DEX, ENV, MDB, corpus_root, skip_if_absent
from tests.samples import record_trace
from tests.small_fs import mounted

PROFILE = "vmc"
PROFILE_ENV = "HYPOTHESIS_PROFILE"

# The same examples count on every machine, and nothing that depends on its speed: on a busy
# or slow machine (or a fresh clone, where Hypothesis first builds its Unicode tables) a
# deadline or the "input generation is slow" health check fails tests that are correct.
# A failure prints the blob that reproduces it (@reproduce_failure).
settings.register_profile(
    PROFILE,
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get(PROFILE_ENV, PROFILE))


def pytest_report_header() -> str:
    if DEX.present and MDB.present:
        return f"corpus: {corpus_root()} ({len(DEX.files)} audits, {len(MDB.files)} traces)"
    return f"corpus: absent at {corpus_root()}; its tests skip (set {ENV}=DIR)"


def pytest_runtest_setup(item: pytest.Item) -> None:
    skip_if_absent(item)


@pytest.fixture(scope="session")
def recorded_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace file the simulated VMC and the recorder made against the cashless core."""
    directory = tmp_path_factory.mktemp("trace")
    path = directory / "session.mdb"
    path.write_text(asyncio.run(record_trace(directory)), encoding="utf-8")
    return path


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of this test's own (root only: skipped, saying why, elsewhere)."""
    with mounted(tmp_path / "small") as mount_point:
        yield mount_point
