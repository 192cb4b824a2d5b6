"""Shared fixtures: a migrated database per test (SQLite always, PostgreSQL when
``KONSIL_TEST_POSTGRES_URL`` is set), the app, a logged-in client, a browser.

Under CI (``CI=true``) a skipped test fails the run: every test must really run there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from konsil.app import FeatureSetup, create_app
from konsil.auth.passwords import FAST_FOR_TESTS, PasswordHasher
from konsil.clock import FakeClock
from konsil.config import Config
from konsil.db import upgrade
from tests.coturn import Turn, run_turn

PG_URL = os.environ.get("KONSIL_TEST_POSTGRES_URL", "")
IN_CI = os.environ.get("CI", "").lower() == "true"
TEST_SECRET = "test-secret-key-not-for-production-0123456789"

AiohttpClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped and exitstatus == 0:
        session.exitstatus = 1
        if reporter:
            reporter.write_line(
                f"CI=true: {len(skipped)} test(s) skipped; under CI every test must run:", red=True
            )
            for rep in skipped:
                reporter.write_line(f"  {rep.nodeid}: {rep.longrepr}")


# ---------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


def _pg_admin_url() -> str:
    # asyncpg wants the plain postgresql:// scheme
    return PG_URL.replace("postgresql+asyncpg://", "postgresql://")


def _with_db(url: str, name: str) -> str:
    return re.sub(r"/[^/]*$", f"/{name}", url)


async def _pg_exec(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_admin_url())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    if not PG_URL:
        pytest.skip("PostgreSQL not configured: set KONSIL_TEST_POSTGRES_URL")
    name = f"konsil_tpl_{os.getpid()}"
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}"'))
    asyncio.run(upgrade(_with_db(PG_URL, name)))
    yield name
    asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty database for one test, on each backend."""
    if request.param == "sqlite":
        target = tmp_path / "konsil.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        yield f"sqlite+aiosqlite:///{target}"
        return
    yield from _pg_database(request.getfixturevalue("pg_template"))


@pytest.fixture
def pg_db_url(pg_template: str) -> Iterator[str]:
    """A freshly migrated PostgreSQL database, for behaviour SQLite cannot show."""
    yield from _pg_database(pg_template)


def _pg_database(template: str) -> Iterator[str]:
    name = f"konsil_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield _with_db(PG_URL, name)
    finally:
        asyncio.run(_pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ---------------------------------------------------------------- app


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(FAST_FOR_TESTS)


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> Config:
    return Config(database_url=db_url, data_dir=str(tmp_path / "data"), secret_key=TEST_SECRET)


@pytest.fixture
def make_app(
    config: Config, clock: FakeClock, hasher: PasswordHasher
) -> Callable[..., web.Application]:
    def factory(features: list[FeatureSetup] | None = None, **changes: Any) -> web.Application:
        cfg = dataclasses.replace(config, **changes) if changes else config
        return create_app(cfg, clock=clock, hasher=hasher, features=features)

    return factory


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, make_app: Callable[..., web.Application]) -> Client:
    return await aiohttp_client(make_app())


# ---------------------------------------------------------------- people


@dataclasses.dataclass
class Person:
    username: str
    password: str
    account_id: str
    role: str


@pytest.fixture
def create_user(client: Client) -> Callable[..., Awaitable[Person]]:
    from konsil import appkeys as K
    from konsil.audit.service import SYSTEM
    from konsil.identity.service import NewAccount

    async def create(
        username: str,
        role: str = "practitioner",
        *,
        specialty: str | None = None,
        display_name: str | None = None,
        password: str | None = None,
    ) -> Person:
        pw = password or f"pw-{username}-0123456789"
        account = await client.app[K.IDENTITY].do_create_account(
            SYSTEM,
            NewAccount(
                username=username,
                password=pw,
                role=role,
                specialty=specialty,
                display_name=display_name or username.title(),
            ),
        )
        return Person(username, pw, account.id, role)

    return create


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


async def csrf_from(client: Client, path: str) -> str:
    resp = await client.get(path)
    text = await resp.text()
    m = CSRF_RE.search(text)
    assert m, f"no CSRF token on {path}"
    return m.group(1)


async def web_login(client: Client, person: Person) -> str:
    """Sign in through the login form; returns the session's CSRF token."""
    token = await csrf_from(client, "/login")
    resp = await client.post(
        "/login",
        data={
            "username": person.username,
            "password": person.password,
            "csrf_token": token,
            "next": "/",
        },
        allow_redirects=False,
    )
    assert resp.status == 303, await resp.text()
    return await csrf_from(client, "/account/security")


@pytest.fixture
async def admin(create_user: Callable[..., Awaitable[Person]]) -> Person:
    return await create_user("admin", "admin")


# ---------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Debian Chromium driven by Playwright (never Playwright's own download)."""
    if not HAVE_CHROMIUM:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[Turn]:
    """A coturn process with the REST-API shared secret ``TURN_SECRET``."""
    yield from run_turn(tmp_path)
