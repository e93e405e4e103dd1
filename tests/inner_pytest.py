"""Run part of the suite in a fresh interpreter: for what only a clean start shows (an empty
Hypothesis store, a missing corpus)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INNER_TIMEOUT_S = 110


def run_pytest(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``pytest -p no:cacheprovider ARGS`` from the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=INNER_TIMEOUT_S,
        check=False,
    )
