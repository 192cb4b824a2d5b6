from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from konsil.clock import FakeClock
from konsil.db import Database
from tests.conftest import AiohttpClient
from tests.workflow.helpers import Workflow, make_workflow
from tests.workflow.test_document_views import World, make_world


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.dispose()


@pytest.fixture
async def wf(db: Database, clock: FakeClock) -> Workflow:
    return await make_workflow(db, clock, max_attempts=4)


@pytest.fixture
async def world(
    make_app: Callable[..., web.Application],  # first: its database outlives the app
    aiohttp_client: AiohttpClient,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
) -> World:
    """The app with DSP/CNS simulators, an organisation and two patients (web tests)."""
    return await make_world(aiohttp_client, aiohttp_server, make_app, tmp_path)
