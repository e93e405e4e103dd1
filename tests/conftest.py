"""Shared fixtures: corpus locations and reader configurations."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
MDB_TRACES = sorted((FIXTURES / "mdb").glob("*.mdb"))
