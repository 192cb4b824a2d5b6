"""Running the delivery worker: inside the web app (cleanup context) or alone (``konsil worker``)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp

from konsil.audit.service import AuditLog
from konsil.clock import Clock
from konsil.config import Config
from konsil.db import Database
from workflow.connectors import build_transports
from workflow.connectors.http import client_session
from workflow.outbox import DeliveryWorker, Transport, WorkerSettings


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def settings_of(config: Config) -> WorkerSettings:
    wf = config.workflow
    return WorkerSettings(
        batch_size=wf.worker_batch,
        concurrency=wf.worker_concurrency,
        lease_seconds=float(wf.lease_seconds),
    )


TransportFactory = Callable[[aiohttp.ClientSession], Mapping[str, Transport]]


async def run_worker(
    config: Config,
    db: Database,
    clock: Clock,
    stop: asyncio.Event,
    *,
    transports: TransportFactory | None = None,
    started: Callable[[DeliveryWorker], None] | None = None,
) -> None:
    async with client_session(config.workflow) as http:
        made = transports(http) if transports else build_transports(config.workflow, http)
        worker = DeliveryWorker(
            db,
            clock,
            made,
            worker_id=worker_id(),
            settings=settings_of(config),
            audit=AuditLog(clock),
        )
        if started:
            started(worker)
        await worker.run(stop)


async def worker_context(
    config: Config, db: Database, clock: Clock, started: Callable[[DeliveryWorker], None]
) -> AsyncIterator[None]:
    """For ``app.cleanup_ctx``: deliver while the server runs, stop cleanly with it."""
    async with client_session(config.workflow) as http:
        worker = DeliveryWorker(
            db,
            clock,
            build_transports(config.workflow, http),
            worker_id=worker_id(),
            settings=settings_of(config),
            audit=AuditLog(clock),
        )
        started(worker)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        yield
        stop.set()
        try:
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            task.cancel()
