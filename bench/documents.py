"""Certificates signed, persisted, queued and delivered end to end to the CNS simulator.

    python -m bench.documents [--database-url URL] [--n 2000] [--concurrency 16] [--no-audit]
                              [--split]

The producer (this process) issues certificates as a doctor would: build (a small CDA), sign,
store and enqueue, one transaction each, audited. A ``konsil worker`` process delivers them to a
``konsil simulate cns`` process (which parses, XSD-validates and stores each one). Reported:
certificates per second from the first commit to the last acknowledgement, and the p50/p99 from a
message's commit to its recorded acknowledgement. ``--no-audit`` replaces the audit log by a no-op
to show what the audit chain's serialisation costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select

from konsil.audit.service import AuditLog
from konsil.clock import SystemClock
from konsil.db import Database, upgrade
from tests.workflow.helpers import Workflow, make_workflow
from workflow.models import OutboxMessage


class NoAudit(AuditLog):
    async def record(self, *args: Any, **kwargs: Any) -> Any:
        return None


def spawn(cmd: list[str], env: dict[str, str], log: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def fresh_pg(url: str) -> str:
    import asyncpg

    admin = url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"konsil_bench_{os.getpid()}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url.rsplit("/", 1)[0] + f"/{name}"


async def produce(wf: Workflow, n: int, concurrency: int) -> float:
    patients = [await wf.patient(i) for i in range(20)]
    start = time.perf_counter()

    async def one(k: int) -> None:
        for i in range(k, n, concurrency):
            await wf.issue_certificate(patients[i % len(patients)])

    await asyncio.gather(*(one(k) for k in range(concurrency)))
    return time.perf_counter() - start


async def run(url: str, n: int, concurrency: int, audit: bool, split: bool, tmp: Path) -> None:
    if url.startswith("postgresql"):
        url = await fresh_pg(url)
    await upgrade(url)
    db = Database(url, pool_size=concurrency)
    wf = await make_workflow(db, SystemClock())
    if not audit:
        wf.documents.audit = NoAudit(wf.clock)
    port = free_port()
    env = {
        **os.environ,
        "KONSIL_WORKFLOW_CNS_URL": f"http://127.0.0.1:{port}/ecit/v1/certificates",
        "KONSIL_WORKFLOW_WORKER_BATCH": "200",
        "KONSIL_WORKFLOW_WORKER_CONCURRENCY": "64",
        "KONSIL_LOG_LEVEL": "WARNING",
    }
    konsil = [sys.executable, "-m", "konsil.cli"]
    store = tmp / "cns"
    log = (tmp / "bench.log").open("ab")
    sim = [*konsil, "simulate", "cns", "--port", str(port), "--store", str(store)]
    worker = [*konsil, "worker", "--database-url", url]
    procs = [spawn(sim, env, log)] if split else [spawn(sim, env, log), spawn(worker, env, log)]
    try:
        await asyncio.sleep(1.5)  # let the processes start
        t0 = time.perf_counter()
        produce_s = await produce(wf, n, concurrency)
        if split:  # the worker starts only now: its delivery rate alone
            procs.append(spawn(worker, env, log))
            t0 = time.perf_counter()
        while True:
            async with db.session() as s:
                rows = (
                    await s.execute(
                        select(OutboxMessage.created_at, OutboxMessage.delivered_at).where(
                            OutboxMessage.status == "delivered"
                        )
                    )
                ).all()
            if len(rows) >= n:
                break
            await asyncio.sleep(0.05)
        total_s = time.perf_counter() - t0
        lat = sorted((d - c).total_seconds() * 1000 for c, d in rows if d is not None)
        q = statistics.quantiles(lat, n=100)
        kind = "postgresql" if url.startswith("postgresql") else "sqlite"
        stored = sum(1 for _ in store.glob("*/metadata.json"))
        print(
            f"{kind} n={n} producers={concurrency} audit={'on' if audit else 'off'}"
            f"{' split' if split else ''}: "
            f"issued (sign+persist+enqueue) {n / produce_s:.0f}/s; "
            f"{'delivery alone' if split else 'end to end'} {n / total_s:.0f} certificates/s; "
            f"commit->ack p50 {q[49]:.0f} ms p99 {q[98]:.0f} ms; simulator stored {stored}",
            flush=True,
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        log.close()
        await db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument(
        "--split", action="store_true", help="issue everything first, then time delivery alone"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(d) / 'bench.db'}"
        asyncio.run(run(url, args.n, args.concurrency, not args.no_audit, args.split, Path(d)))


if __name__ == "__main__":
    main()
