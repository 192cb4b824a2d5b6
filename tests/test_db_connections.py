"""Pooled PostgreSQL connections are checked at checkout without a round trip on the busy path
(konsil.db.check_on_checkout): one the server ended is replaced, one idle too long is pinged."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy import text

from konsil.db import Database
from tests.conftest import _pg_admin_url


async def backend_pid(db: Database) -> int:
    async with db.transaction() as s:
        return int((await s.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(pid: int) -> None:
    """End that backend from another connection and wait until it is gone (PostgreSQL ≥ 14)."""
    conn = await asyncpg.connect(_pg_admin_url().rsplit("/", 1)[0] + "/postgres")
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", pid) is True
    finally:
        await conn.close()


async def pooled(db: Database) -> asyncpg.Connection:
    """The asyncpg connection of a one-connection pool (returned to the pool, idle)."""
    async with db.session() as s:
        raw = await (await s.connection()).get_raw_connection()
        conn: asyncpg.Connection = raw.driver_connection
        return conn


async def test_a_connection_the_server_ended_is_replaced_at_checkout(pg_db_url: str) -> None:
    db = Database(pg_db_url, pool_size=1)
    try:
        pid = await backend_pid(db)  # the pool now holds this connection, idle
        raw = await pooled(db)
        await terminate(pid)
        # asyncpg sees the end of the stream as soon as the event loop reads the socket
        for _ in range(500):
            if raw.is_closed():
                break
            await asyncio.sleep(0.01)
        assert raw.is_closed()
        # the next transaction works, on a new connection
        assert await backend_pid(db) != pid
        async with db.transaction() as s:
            assert (await s.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await db.dispose()


async def test_an_idle_connection_is_pinged_and_replaced_when_dead(pg_db_url: str) -> None:
    # every connection counts as idle (the default: pinged after 10 s without use)
    db = Database(pg_db_url, pool_size=1, ping_after_idle_seconds=0.0)
    try:
        pid = await backend_pid(db)
        await terminate(pid)  # no waiting for the close to be seen: the ping finds it
        assert await backend_pid(db) != pid
    finally:
        await db.dispose()


async def test_a_busy_connection_is_not_pinged(pg_db_url: str) -> None:
    db = Database(pg_db_url, pool_size=1)
    try:
        await backend_pid(db)
        seen: list[str] = []
        (await pooled(db)).add_query_logger(lambda record: seen.append(record.query))
        for _ in range(3):
            await backend_pid(db)
        # only the transactions themselves: no ping (BEGIN, ";", ROLLBACK) at each checkout
        assert seen == ["BEGIN;", "COMMIT;"] * 3

    finally:
        await db.dispose()


async def test_an_idle_connection_is_pinged(pg_db_url: str) -> None:
    db = Database(pg_db_url, pool_size=1, ping_after_idle_seconds=0.0)
    try:
        await backend_pid(db)
        seen: list[str] = []
        (await pooled(db)).add_query_logger(lambda record: seen.append(record.query))
        await backend_pid(db)
        # the ping (";" in a transaction of its own), then the transaction (asyncpg's query
        # logger shows simple queries, not the prepared SELECT)
        assert seen == ["BEGIN;", ";", "ROLLBACK;", "BEGIN;", "COMMIT;"]
    finally:
        await db.dispose()
