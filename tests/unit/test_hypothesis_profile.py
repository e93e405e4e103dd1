"""The property tests run the same on a fast laptop, a busy 2-core CI machine and a fresh clone."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import PROFILE, PROFILE_ENV
from tests.inner_pytest import run_pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def _property_tests() -> Iterator[tuple[str, Any]]:
    for path in sorted(TESTS.rglob("test_*.py")):
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for name, test in vars(module).items():
            if getattr(test, "is_hypothesis_test", False):
                yield f"{module.__name__}::{name}", test


OURS = pytest.mark.skipif(
    os.environ.get(PROFILE_ENV, PROFILE) != PROFILE, reason=f"{PROFILE_ENV} chose another profile"
)


@OURS
def test_the_profile_ignores_the_machines_speed() -> None:
    loaded = settings.default
    assert loaded is not None
    assert loaded.deadline is None
    assert HealthCheck.too_slow in loaded.suppress_health_check
    assert loaded.max_examples == 100
    assert loaded.print_blob


@OURS
def test_no_property_test_brings_back_a_deadline_or_the_slow_input_check() -> None:
    found = dict(_property_tests())
    assert "tests.unit.test_cloud_codec::test_random_maps_only_raise_command_error" in found
    for where, test in found.items():
        chosen = test._hypothesis_internal_use_settings
        assert chosen.deadline is None, where
        assert HealthCheck.too_slow in chosen.suppress_health_check, where


def test_a_fresh_clone_passes_the_codec_properties(tmp_path: Path) -> None:
    """With no ``.hypothesis`` yet, Hypothesis first builds its Unicode tables: slow, not wrong."""
    env = {k: v for k, v in os.environ.items() if k != PROFILE_ENV}
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(tmp_path / "fresh")
    done = run_pytest(
        "-q", "tests/unit/test_cloud_codec.py::test_random_maps_only_raise_command_error", env=env
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "fresh").is_dir()  # the run really started from an empty directory
