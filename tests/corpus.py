"""Where the tests find the corpus: real audits and bus traces from public repositories.

The corpus is not part of this repository. Dev machines and CI keep it at ``../shared/corpus/``
beside the repository; ``VMC_CORPUS`` names another directory (one holding ``dex/`` and
``mdb/``). Tests about the real files are parametrised over them and skip, with one line that
says what is missing and how to point to it, where they are absent; every other test runs on
audits and traces vmc makes itself (``tests/samples.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = "VMC_CORPUS"


def corpus_root() -> Path:
    """``$VMC_CORPUS`` if set, else ``../shared/corpus`` beside the repository."""
    named = os.environ.get(ENV)
    return Path(named) if named else ROOT.parent / "shared" / "corpus"


@dataclass(frozen=True, slots=True)
class CorpusPart:
    """One kind of corpus file: the EVA-DTS audits in ``dex/`` or the MDB traces in ``mdb/``."""

    name: str
    directory: Path
    pattern: str
    files: tuple[Path, ...]

    @property
    def present(self) -> bool:
        return bool(self.files)

    @property
    def reason(self) -> str:
        """The one line a skipped test reports: what is missing, and how to point to it."""
        root = self.directory.parent
        missing = f"no {self.pattern} in {self.directory}" if root.is_dir() else f"no {root}"
        return (
            f"corpus of real files absent ({missing}): set {ENV}=DIR, a directory with dex/ "
            "and mdb/ (default: ../shared/corpus beside the repository)"
        )

    @property
    def needed(self) -> pytest.MarkDecorator:
        """Marks a test that reads this part of the corpus (``skip_if_absent`` skips it)."""
        return pytest.mark.corpus(self.name)

    def params(self) -> list[Any]:
        """The files, for ``parametrize``; where there are none, one parameter that skips."""
        if self.present:
            return [pytest.param(path, id=path.name, marks=self.needed) for path in self.files]
        return [pytest.param(None, id="no-corpus", marks=self.needed)]

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def path(self, name: str) -> Path:
        return self.directory / name


def _part(name: str, pattern: str) -> CorpusPart:
    directory = corpus_root() / name
    return CorpusPart(name, directory, pattern, tuple(sorted(directory.glob(pattern))))


DEX = _part("dex", "*.dex")
"""EVA-DTS audits of real machines (the corpus's dex/README.md says where each comes from)."""
MDB = _part("mdb", "*.mdb")
"""MDB bus traces of a production cashless firmware's unit tests."""
PARTS = {part.name: part for part in (DEX, MDB)}


def skip_if_absent(item: pytest.Item) -> None:
    """Skip a test marked ``corpus`` whose part of the corpus is absent.

    Skipping here, at one place, makes ``-ra`` fold every such skip into one line.
    """
    for mark in item.iter_markers("corpus"):
        part = PARTS[mark.args[0]]
        if not part.present:
            pytest.skip(part.reason)
