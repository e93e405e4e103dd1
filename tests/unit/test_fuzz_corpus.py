"""The fuzz targets' kept corpus (fuzz/corpus) replayed: every input ends in an allowed error
or none, so a crash the fuzzer once found, or new code, cannot slip back in unseen."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.targets import NAMES, Target, build
from protocols.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"


@pytest.mark.parametrize("name", NAMES)
def test_fuzz_corpus_replays_without_a_crash(name: str) -> None:
    inputs = sorted((CORPUS / name).iterdir())
    assert inputs, f"fuzz/corpus/{name} is empty"
    target = build(name)
    for path in inputs:
        target.one_input(path.read_bytes())


def test_fuzz_harness_passes_only_the_documented_errors() -> None:
    def parser(data: bytes) -> None:
        raise (ConfigError if data else TypeError)("bad")

    target = Target("t", parser, (ConfigError,))
    target.one_input(b"x")
    with pytest.raises(TypeError):
        target.one_input(b"")
    with pytest.raises(KeyError):
        build("nope")


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
@pytest.mark.parametrize("name", NAMES)
def test_fuzz_a_million_inputs(name: str) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / "run"),
            "--target",
            name,
            "--runs",
            "1000000",
            "--shared",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["crashes"] == 0, result.stderr[-4000:]
    assert report["inputs"] >= 1_000_000
