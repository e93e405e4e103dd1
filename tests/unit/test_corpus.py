"""The corpus of real files stays outside the repository, and the tests run without it."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.corpus import DEX, ENV, MDB, ROOT, corpus_root
from tests.inner_pytest import run_pytest


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@DEX.needed
@MDB.needed
def test_no_tracked_file_is_a_copy_of_a_corpus_file() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False, timeout=60
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no tracked files to compare")
    corpus = {_digest(path): path for path in corpus_root().rglob("*") if path.is_file()}
    tracked = [ROOT / name for name in listed.stdout.decode().split("\0") if name]
    copies = [
        f"{path.relative_to(ROOT)} = {corpus[digest]}"
        for path in tracked
        if path.is_file() and (digest := _digest(path)) in corpus
    ]
    assert copies == []


def test_without_the_corpus_its_tests_skip_with_one_line_and_the_rest_run() -> None:
    env = {**os.environ, ENV: "/nonexistent"}
    done = run_pytest(
        "-v",
        "-rs",
        "tests/unit/test_mdb_traces.py",
        "tests/unit/test_evadts_writer_deltas.py",
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, skipped
    assert "(no /nonexistent)" in skipped[0]
    assert f"{ENV}=DIR" in skipped[0]
    assert "corpus: absent at /nonexistent" in done.stdout  # the header says it first
    for runs_anyway in (
        "test_a_recorded_session_replays_exactly",
        "test_cli_delta_json",
        "test_written_audits_parse_back_to_the_same_records",
    ):
        assert f"{runs_anyway} PASSED" in done.stdout
