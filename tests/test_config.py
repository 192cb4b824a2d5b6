from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from konsil.cli import main
from konsil.config import load_config
from konsil.errors import ConfigError


def test_layers_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "konsil.toml"
    f.write_text('server_name = "file.lu"\nport = 9000\n[auth]\nlockout_threshold = 3\n')
    cfg = load_config(f, env={})
    assert (cfg.server_name, cfg.port, cfg.auth.lockout_threshold) == ("file.lu", 9000, 3)
    cfg = load_config(f, env={"KONSIL_PORT": "9100", "KONSIL_AUTH_LOCKOUT_THRESHOLD": "7"})
    assert (cfg.port, cfg.auth.lockout_threshold) == (9100, 7)
    cfg = load_config(f, env={"KONSIL_PORT": "9100"}, overrides={"port": 9200})
    assert cfg.port == 9200


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("port = 70000", {}, "port must be between"),
        ("", {"KONSIL_PORT": "eighty"}, "expected an integer"),
        ('database_url = "mysql://x"', {}, "database_url must start with"),
        ('colour = "blue"', {}, "unknown setting(s) in top level: colour"),
        ("[auth]\nlockout = 1", {}, "unknown setting(s) in auth: lockout"),
        ("port = [", {}, "not valid TOML"),
        ('server_name = "a b"', {}, "not a valid Matrix server name"),
        ("", {"KONSIL_AUTH_COOKIE_SECURE": "maybe"}, "expected true or false"),
        ("[auth]\npassword_memory_kib = 4096", {}, "auth.password_memory_kib must be between"),
        ("[auth]\npassword_memory_kib = 9216\npassword_passes = 2", {}, "OWASP"),
        ("", {"KONSIL_AUTH_PASSWORD_PASSES": "0"}, "auth.password_passes must be between"),
        ("", {"KONSIL_AUTH_PASSWORD_HASH_CONCURRENCY": "0"}, "password_hash_concurrency"),
        ("database_max_connections = -1", {}, "database_max_connections must be between"),
    ],
)
def test_bad_config_is_one_clear_error(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    f = tmp_path / "konsil.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(f, env=env)
    assert message in str(err.value)


def test_cli_reports_bad_config_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "konsil.toml"
    f.write_text("port = 0\n")
    assert main(["serve", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("konsil: error: port must be between")


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "--config", "/nonexistent/konsil.toml"]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "cap", "pool", "overflow"),
    [
        ("sqlite+aiosqlite:///{tmp}/a.db", None, 20, 0),
        ("sqlite+aiosqlite:///{tmp}/a.db", 5, 5, 0),
        ("postgresql+asyncpg://u@127.0.0.1:1/x", None, 10, 10),
        ("postgresql+asyncpg://u@127.0.0.1:1/x", 5, 2, 3),
    ],
)
async def test_database_max_connections_caps_the_pool(
    tmp_path: Path, url: str, cap: int | None, pool: int, overflow: int
) -> None:
    from sqlalchemy.pool import QueuePool

    from konsil.db import Database

    db = Database(url.format(tmp=tmp_path), max_connections=cap)
    try:
        p = db.engine.sync_engine.pool
        assert isinstance(p, QueuePool)
        assert (p.size(), p._max_overflow) == (pool, overflow)
    finally:
        await db.dispose()


async def test_sqlite_writes_do_not_wait_for_connections_held_by_reads(tmp_path: Path) -> None:
    """One connection of a SQLite pool is kept for the (single) writer: a write goes through
    while as many reads as the pool holds are open (the last waits for a connection)."""
    from sqlalchemy import text

    from konsil.db import Database

    db = Database(f"sqlite+aiosqlite:///{tmp_path}/w.db", max_connections=3)
    release = asyncio.Event()
    opened: list[int] = []
    two_open = asyncio.Event()

    async def read() -> None:
        async with db.session() as r:
            opened.append((await r.execute(text("SELECT count(*) FROM t"))).scalar_one())
            if len(opened) == 2:
                two_open.set()
            await release.wait()

    try:
        async with db.transaction() as s:
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
        readers = [asyncio.create_task(read()) for _ in range(3)]
        await two_open.wait()

        async def write() -> None:
            async with db.transaction() as s:
                await s.execute(text("INSERT INTO t VALUES (1)"))

        # wait_for only turns a hang (every connection held by a reader) into a failure
        await asyncio.wait_for(write(), 30)
        release.set()
        await asyncio.gather(*readers)
        assert sorted(opened) in ([0, 0, 0], [0, 0, 1])
        async with db.session() as r:
            assert (await r.execute(text("SELECT count(*) FROM t"))).scalar() == 1
    finally:
        release.set()
        await db.dispose()
