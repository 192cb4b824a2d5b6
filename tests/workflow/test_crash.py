"""Crash test: a worker process killed with SIGKILL mid-delivery loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from konsil.clock import SystemClock
from konsil.db import Database, upgrade
from tests.workflow.helpers import make_workflow, stored_documents
from workflow.cda.xsd import schema_available

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)
N = 1000
KONSIL = [sys.executable, "-m", "konsil.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def wait_until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def spawn(cmd: list[str], env: dict[str, str], log: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)


def count_stored(store: Path) -> int:
    return sum(1 for _ in store.glob("*/metadata.json"))


async def statuses(url: str) -> dict[str, int]:
    from workflow.outbox import Outbox

    db = Database(url)
    try:
        return await Outbox(db, SystemClock(), None, max_attempts=1).counts()  # type: ignore[arg-type]
    finally:
        await db.dispose()


@pytest.mark.timeout(120)
async def test_worker_killed_mid_delivery_loses_and_duplicates_nothing(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'crash.db'}"
    await upgrade(url)
    db = Database(url)
    wf = await make_workflow(db, SystemClock())
    patients = [await wf.patient(i) for i in range(10)]
    issued: set[str] = set()
    for i in range(N):
        doc, _ = await wf.issue_certificate(patients[i % 10])
        issued.add(doc.id)
    await db.dispose()

    store = tmp_path / "cns-store"
    port = free_port()
    env = {
        **os.environ,
        "KONSIL_WORKFLOW_CNS_URL": f"http://127.0.0.1:{port}/ecit/v1/certificates",
        "KONSIL_WORKFLOW_LEASE_SECONDS": "2",
        "KONSIL_WORKFLOW_WORKER_BATCH": "50",
        "KONSIL_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "processes.log").open("ab")
    try:
        await run_crash(url, store, port, env, log, issued, processes)
    finally:
        log.close()


async def run_crash(
    url: str,
    store: Path,
    port: int,
    env: dict[str, str],
    log: BinaryIO,
    issued: set[str],
    processes: list[subprocess.Popen[bytes]],
) -> None:
    sim = [*KONSIL, "simulate", "cns", "--port", str(port), "--store", str(store)]
    processes.append(spawn([*sim, "--latency", "10"], env, log))
    worker_cmd = [*KONSIL, "worker", "--database-url", url]
    worker = spawn(worker_cmd, env, log)
    processes.append(worker)
    await asyncio.to_thread(
        wait_until, lambda: count_stored(store) >= N // 4, 40, "first deliveries"
    )
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    at_kill = await statuses(url)
    assert at_kill.get("delivered", 0) < N  # killed mid-way, with work left

    processes.append(spawn(worker_cmd, env, log))

    async def all_delivered() -> bool:
        return (await statuses(url)).get("delivered", 0) == N

    deadline = time.monotonic() + 60
    while not await all_delivered():
        assert time.monotonic() < deadline, f"not all delivered: {await statuses(url)}"
        await asyncio.sleep(0.1)

    stored = stored_documents(store)
    ids = [s["document_id"] for s in stored]
    assert len(stored) == N and set(ids) == issued  # exactly N distinct, none missing
    assert len({s["acknowledgement"]["cns_reference"] for s in stored}) == N  # type: ignore[index]
    print(f"at kill: {at_kill}")
