"""The bridge's store on PostgreSQL (asyncpg): the same SQL as SQLite's, in a pool.

Each statement is a round trip to the server, so the transactions take as few as they can:
BEGIN and its setting go together, a read on its own takes no transaction, and a connection
goes back to the pool without asyncpg's reset query (the bridge changes no session state: its
setting is ``SET LOCAL``, its advisory lock the transaction's)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from bridge.store import ADD_SEQ, HEADS, SCHEMA, SqlStore, Tx, placeholders

SCHEMA_LOCK = 7_470_201
"""The advisory lock two instances starting together take to create the tables once."""


class _PgTx:
    def __init__(self, conn: PoolConnectionProxy[asyncpg.Record]) -> None:
        self.conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self.conn.execute(placeholders(sql), *args)
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(placeholders(sql), *args)]


async def _session_unchanged(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing to undo (an open transaction is still rolled
    back by asyncpg itself)."""


class PostgresStore(SqlStore):
    def __init__(self, url: str) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url, min_size=1, max_size=8, reset=_session_unchanged
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            await conn.execute(SCHEMA.format(serial="BIGSERIAL PRIMARY KEY"))
            if not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE"
                " table_schema = current_schema() AND table_name = 'deliveries'"
                " AND column_name = 'seq')"
            ):
                await conn.execute(ADD_SEQ)
            await conn.execute(HEADS)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def tx(self, *, durable: bool = True) -> AsyncIterator[Tx]:
        assert self._pool is not None, "store not open"
        async with self._pool.acquire() as conn:
            await conn.execute("BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit TO OFF")
            try:
                yield _PgTx(conn)
            except BaseException:
                with contextlib.suppress(Exception):  # else the pool's release rolls it back
                    await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    async def _all(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read on its own: one statement, no transaction."""
        assert self._pool is not None, "store not open"
        async with self._pool.acquire() as conn:
            return [tuple(r) for r in await conn.fetch(placeholders(sql), *args)]
