"""Database: SQLAlchemy 2 async engine, declarative base, transactions and migrations.

SQLite (aiosqlite) is the embedded default: WAL, foreign keys on, and writes serialised in this
process (``BEGIN IMMEDIATE`` under one lock) so that concurrent requests queue instead of failing
with "database is locked". PostgreSQL (asyncpg) is the production store.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import QueuePool
from sqlalchemy.types import DateTime, TypeDecorator

from konsil.clock import to_utc
from konsil.errors import ConfigError

log = logging.getLogger("konsil.db")

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# Alembic (with Mako) is imported only by the migration commands, not by the server: it costs
# ~11 MB of RSS, and the server's start-up check (`check_migrated`) reads the revision graph
# from the version files itself.

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Packages whose ``migrations/`` folder holds an Alembic branch of its own.
MIGRATION_PACKAGES = ("konsil", "messaging", "workflow", "rcp", "video")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on both SQLite (which drops tzinfo) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = to_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else to_utc(value)


# A pooled PostgreSQL connection idle longer than this is pinged before use.
PING_AFTER_IDLE_SECONDS = 10.0
_IDLE_SINCE = "konsil.idle_since"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_connections: int | None = None,
    ping_after_idle_seconds: float = PING_AFTER_IDLE_SECONDS,
) -> AsyncEngine:
    """``max_connections`` (the ``database_max_connections`` setting), when given, caps the pool
    instead of the defaults below: on SQLite each connection is a thread with its own page cache
    (~1 MB of RSS each under load), on PostgreSQL a socket with its statement cache."""
    if is_sqlite(url):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A fixed pool: opening a SQLite connection (thread + schema parse) costs more than a query.
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            pool_size=max_connections or max(pool_size, 20),
            max_overflow=0,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if url.startswith("postgresql+asyncpg"):
        if max_connections:
            pool_size = max(1, max_connections // 2)
            overflow = max_connections - pool_size
        else:
            overflow = pool_size
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=overflow)
        check_on_checkout(engine, idle_seconds=ping_after_idle_seconds)
        return engine
    raise ConfigError(f"unsupported database URL scheme: {url.split('://')[0]}")


def check_on_checkout(
    engine: AsyncEngine, *, idle_seconds: float = PING_AFTER_IDLE_SECONDS
) -> None:
    """Hand out only live PostgreSQL connections, without a round trip on the busy path.

    SQLAlchemy's ``pool_pre_ping`` pings at every checkout: with asyncpg that is BEGIN, ``;``,
    ROLLBACK — three round trips before each transaction's own (~0.15 ms of client CPU per
    transaction on this project's bench). Instead, at checkout:

    * a connection the server closed (restart, ``pg_terminate_backend``, idle timeout: the
      socket saw the end of the stream) is replaced at once, for free (asyncpg knows);
    * a connection idle for more than ``idle_seconds`` since its last use is pinged first (a
      peer that vanished without closing — a dropped NAT entry, a failed-over host — shows only
      then); one in use moments ago is not.

    A connection found dead is replaced (``DisconnectionError``: the pool connects anew). What
    neither catches — the server going away within ``idle_seconds`` without the close reaching
    this process — fails that one transaction; SQLAlchemy then invalidates the pool's other
    connections, so the next transaction gets fresh ones."""
    sync = engine.sync_engine

    @event.listens_for(sync, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(sync, "checkout")
    def _checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_IDLE_SINCE, None)
        driver = record.driver_connection
        if driver is not None and driver.is_closed():
            raise DisconnectionError("the server closed this connection")
        if since is None or time.monotonic() - since < idle_seconds:
            return  # new, or used moments ago
        try:
            sync.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            raise DisconnectionError(f"ping failed: {exc}") from exc


_KEEP = "konsil.keep_on_rollback"


def keep_on_rollback(session: AsyncSession, statement: Any, params: Any) -> None:
    """Execute ``statement`` with ``params`` again, in a transaction of its own, if the
    transaction of ``session`` (one of ``Database.transaction``) rolls back. The caller has
    executed it in ``session`` too: on commit it is written once."""
    kept = session.info.get(_KEEP)
    if kept is not None:
        kept.append((statement, params))


class Database:
    """Owns the engine. ``transaction()`` for changes, ``session()`` for reads."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_connections: int | None = None,
        ping_after_idle_seconds: float = PING_AFTER_IDLE_SECONDS,
    ) -> None:
        self.url = url
        self.engine = make_engine(
            url,
            pool_size=pool_size,
            max_connections=max_connections,
            ping_after_idle_seconds=ping_after_idle_seconds,
        )
        self.sqlite = is_sqlite(url)
        writer_bind = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE") if self.sqlite else self.engine
        )
        self._writer = async_sessionmaker(writer_bind, expire_on_commit=False)
        self._reader = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock() if self.sqlite else None
        # SQLite: one pooled connection is kept for the writer (it writes one transaction at
        # a time, under ``_write_lock``), so a write never waits for a checkout behind reads
        # that hold the rest of the pool; reads never wait behind writes anyway (WAL). Only
        # when the pool has room for a reader besides it.
        pool = self.engine.sync_engine.pool
        self._reserve_writer = self.sqlite and isinstance(pool, QueuePool) and pool.size() >= 2
        self._writer_conn: AsyncConnection | None = None

    async def _writer_session(self) -> AsyncSession:
        """A session on the reserved writer connection (SQLite; under ``_write_lock``)."""
        conn = self._writer_conn
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                await conn.close()
            conn = await self.engine.connect()
            self._writer_conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
        return AsyncSession(bind=self._writer_conn, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One database transaction: committed on success, rolled back on any exception.

        What was registered with ``keep_on_rollback`` is written in a transaction of its own
        when this one rolls back (e.g. the audit event of a refusal, raised inside the
        transaction that read what it needed to refuse)."""
        kept: list[tuple[Any, Any]] = []
        try:
            if self._write_lock is not None and self._reserve_writer:
                async with self._write_lock:
                    async with await self._writer_session() as session, session.begin():
                        session.info[_KEEP] = kept
                        yield session
            elif self._write_lock is not None:
                async with self._write_lock, self._writer() as session, session.begin():
                    session.info[_KEEP] = kept
                    yield session
            else:
                async with self._writer() as session, session.begin():
                    session.info[_KEEP] = kept
                    yield session
        except Exception:
            if kept:
                try:
                    async with self.transaction() as s:
                        for statement, params in kept:
                            await s.execute(statement, params)
                except Exception:
                    log.exception("could not write what a rolled-back transaction kept")
            raise

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work (nothing is committed)."""
        async with self._reader() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None:
            await conn.close()
        await self.engine.dispose()


# ---------------------------------------------------------------- migrations


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    kernel = _package_dir("konsil")
    assert kernel is not None
    cfg.set_main_option("script_location", str(kernel / "migrations"))
    locations = []
    for pkg in MIGRATION_PACKAGES:
        d = _package_dir(pkg)
        if d is not None and (d / "migrations" / "versions").is_dir():
            locations.append(str(d / "migrations" / "versions"))
    cfg.set_main_option("version_locations", " ".join(locations))
    cfg.set_main_option("path_separator", "space")
    cfg.attributes["database_url"] = url
    return cfg


def script_heads(url: str) -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config(url)).get_heads())


async def current_heads(engine: AsyncEngine) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    def _heads(conn: Connection) -> Sequence[str]:
        return MigrationContext.configure(conn).get_current_heads()

    async with engine.connect() as conn:
        return set(await conn.run_sync(_heads))


async def upgrade(url: str) -> None:
    """Bring the schema to the newest revision of every branch (``alembic upgrade heads``)."""
    from alembic import command

    engine = make_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:

            def _run(sync_conn: Connection) -> None:
                cfg = alembic_config(url)
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, "heads")

            await conn.run_sync(_run)
    finally:
        await engine.dispose()


async def revision(url: str, branch: str, message: str) -> None:
    """Autogenerate the next migration of one package's branch (developers' tool).

    The database is first brought up to date, so the new revision holds only what the models
    changed since.
    """
    from alembic import command

    await upgrade(url)
    engine = make_engine(url, pool_size=1)
    heads = script_heads(url)
    pkg_dir = _package_dir(branch)
    if pkg_dir is None:
        raise ConfigError(f"no package named {branch}")
    versions = pkg_dir / "migrations" / "versions"
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(url))
    branch_heads = [h for h in heads if branch in (script.get_revision(h).branch_labels or ())]
    existing = sorted(p.name for p in versions.glob(f"{branch}_*.py")) if versions.is_dir() else []
    rev_id = f"{branch}_{len(existing) + 1:04d}"
    versions.mkdir(parents=True, exist_ok=True)
    try:
        async with engine.begin() as conn:

            def _run(sync_conn: Connection) -> None:
                cfg = alembic_config(url)
                cfg.attributes["connection"] = sync_conn
                if branch_heads:
                    command.revision(
                        cfg,
                        message=message,
                        autogenerate=True,
                        rev_id=rev_id,
                        head=f"{branch}@head",
                    )
                else:
                    command.revision(
                        cfg,
                        message=message,
                        autogenerate=True,
                        rev_id=rev_id,
                        head="base",
                        branch_label=branch,
                        version_path=str(versions),
                        depends_on="konsil_0001",
                    )

            await conn.run_sync(_run)
    finally:
        await engine.dispose()


async def pending_revisions(engine: AsyncEngine, url: str) -> set[str]:
    """Script heads the database has not reached (empty when fully migrated)."""
    from alembic.script import ScriptDirectory

    have = await current_heads(engine)
    script = ScriptDirectory.from_config(alembic_config(url))
    # Alembic records only the tips: a revision reached through ``depends_on`` (another
    # package's branch depending on a kernel revision) is applied without being a recorded head.
    applied = (
        {r.revision for r in script.revision_map.iterate_revisions(tuple(have), "base")}
        if have
        else set()
    )
    return set(script.get_heads()) - applied


def revision_graph() -> dict[str, tuple[str, ...]]:
    """Every migration's parents (``down_revision`` and ``depends_on``), read from the version
    files' literal assignments without importing them or Alembic."""
    graph: dict[str, tuple[str, ...]] = {}
    for pkg in MIGRATION_PACKAGES:
        d = _package_dir(pkg)
        versions = d / "migrations" / "versions" if d is not None else None
        if versions is None or not versions.is_dir():
            continue
        for path in sorted(versions.glob("*.py")):
            values: dict[str, Any] = {}
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target = node.targets[0]
                    if isinstance(target, ast.Name) and target.id in {
                        "revision",
                        "down_revision",
                        "depends_on",
                    }:
                        values[target.id] = ast.literal_eval(node.value)
            if not isinstance(values.get("revision"), str):
                raise ConfigError(f"migration {path.name} has no literal revision id")
            parents: list[str] = []
            for key in ("down_revision", "depends_on"):
                v = values.get(key)
                parents.extend([v] if isinstance(v, str) else list(v or ()))
            graph[values["revision"]] = tuple(parents)
    unknown = {p for parents in graph.values() for p in parents} - set(graph)
    if unknown:
        raise ConfigError(f"migrations refer to unknown revisions: {', '.join(sorted(unknown))}")
    return graph


async def unapplied_revisions(engine: AsyncEngine) -> set[str]:
    """Heads of the migration graph the database has not reached: the same answer as
    ``pending_revisions`` (tests check it), without Alembic."""
    graph = revision_graph()
    below = {p for parents in graph.values() for p in parents}
    heads = set(graph) - below

    def _recorded(conn: Connection) -> list[str]:
        if not inspect(conn).has_table("alembic_version"):
            return []
        return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())

    async with engine.connect() as conn:
        todo = await conn.run_sync(_recorded)
    applied: set[str] = set()
    while todo:
        rev = todo.pop()
        if rev not in applied:
            applied.add(rev)
            todo.extend(graph.get(rev, ()))
    return heads - applied


async def check_migrated(db: Database) -> None:
    """Refuse to serve an unmigrated or outdated schema."""
    pending = await unapplied_revisions(db.engine)
    if pending:
        raise ConfigError(
            f"the database is not migrated (missing {', '.join(sorted(pending))}): "
            "run `konsil db upgrade` first"
        )
