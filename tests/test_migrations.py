from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import inspect

from konsil.app import create_app
from konsil.config import Config
from konsil.db import (
    Database,
    current_heads,
    pending_revisions,
    revision_graph,
    script_heads,
    unapplied_revisions,
    upgrade,
)
from konsil.errors import ConfigError
from konsil.models import metadata
from tests.conftest import PG_URL, _pg_exec, _with_db


async def _check_fresh(url: str) -> None:
    db = Database(url)
    try:
        assert await current_heads(db.engine) == set()
        assert await pending_revisions(db.engine, url) == script_heads(url)
        # the server's Alembic-free start-up check agrees with Alembic
        assert await unapplied_revisions(db.engine) == script_heads(url)
        await upgrade(url)
        assert await pending_revisions(db.engine, url) == set()
        assert await unapplied_revisions(db.engine) == set()
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert set(metadata.tables) <= tables
        await upgrade(url)  # idempotent
    finally:
        await db.dispose()


async def test_upgrade_from_empty_sqlite(tmp_path: Path) -> None:
    await _check_fresh(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")


async def test_upgrade_from_empty_postgres() -> None:
    if not PG_URL:
        pytest.skip("PostgreSQL not configured: set KONSIL_TEST_POSTGRES_URL")
    import uuid

    name = f"konsil_mig_{uuid.uuid4().hex[:10]}"
    await _pg_exec(f'CREATE DATABASE "{name}"')
    try:
        await _check_fresh(_with_db(PG_URL, name))
    finally:
        await _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_server_refuses_unmigrated_database(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestServer

    cfg = Config(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}",
        data_dir=str(tmp_path),
        secret_key="k" * 40,
    )
    server = TestServer(create_app(cfg))
    with pytest.raises(ConfigError) as err:
        await server.start_server()
    await server.close()
    assert "konsil db upgrade" in str(err.value)


def test_models_match_migrations(db_url: str) -> None:
    """Autogenerate finds nothing to do: every model change came with its migration."""
    import asyncio

    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    async def diff() -> list[object]:
        db = Database(db_url)
        try:
            async with db.engine.connect() as conn:
                return await conn.run_sync(
                    lambda c: compare_metadata(MigrationContext.configure(c), metadata)
                )
        finally:
            await db.dispose()

    assert asyncio.run(diff()) == []


def test_revision_graph_read_from_files_matches_alembic(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from konsil.db import alembic_config

    script = ScriptDirectory.from_config(alembic_config(f"sqlite+aiosqlite:///{tmp_path}/x.db"))

    def names(v: str | Sequence[str] | None) -> tuple[str, ...]:
        return (v,) if isinstance(v, str) else tuple(v or ())

    expected = {
        r.revision: tuple(sorted({*names(r.down_revision), *names(r.dependencies)}))
        for r in script.walk_revisions()
    }
    assert {rev: tuple(sorted(parents)) for rev, parents in revision_graph().items()} == expected


async def test_partly_migrated_database_is_refused(tmp_path: Path) -> None:
    """A database whose recorded heads miss the newest kernel revision is not served."""
    from sqlalchemy import text

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await upgrade(url)
    graph = revision_graph()
    newest = max(r for r in graph if r.startswith("konsil_"))
    previous = next(p for p in graph[newest] if p.startswith("konsil_"))
    db = Database(url)
    try:
        async with db.transaction() as s:
            await s.execute(
                text("UPDATE alembic_version SET version_num = :p WHERE version_num = :n"),
                {"p": previous, "n": newest},
            )
        assert await unapplied_revisions(db.engine) == {newest}
        assert await pending_revisions(db.engine, url) == {newest}
    finally:
        await db.dispose()
