"""A PostgreSQL database of a test's own on the local server (127.0.0.1:5432, trust auth)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import pytest

SERVER = os.environ.get("VMC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
"""The server's maintenance database; ``VMC_TEST_POSTGRES`` names another."""


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """The URL of a new, empty database, dropped afterwards; the test skips, saying why, where
    no server answers."""
    asyncpg = pytest.importorskip("asyncpg")
    try:
        admin = await asyncpg.connect(SERVER, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at {SERVER} ({exc}); set VMC_TEST_POSTGRES")
    name = f"vmc_bridge_test_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield SERVER.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
