from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from konsil.clock import FakeClock
from konsil.db import Database
from tests.workflow.helpers import Workflow, make_workflow


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    yield database
    await database.dispose()


@pytest.fixture
async def wf(db: Database, clock: FakeClock) -> Workflow:
    return await make_workflow(db, clock, max_attempts=4)
