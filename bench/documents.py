"""Certificates built, signed, persisted, queued and delivered end to end to the CNS simulator.

    python -m bench.documents [--database-url URL] [--n 2000] [--producers 1] [--concurrency 16]
                              [--validate] [--no-audit] [--split] [--folders] [--profile DIR]
                              [--sim-processes 1] [--worker-concurrency 64] [--timeline]

Producers issue certificates as doctors would, each in its own process (like several web workers):
build the sick-leave CDA (and XSD + LU-validate it with ``--validate``, as the video issuer does)
*before* the transaction, then sign, store, audit and enqueue in one transaction. A ``konsil
worker`` process delivers them (and seals the audit chain) to ``konsil simulate cns`` (which
verifies each signature against the organisation's exported public key, parses, XSD +
LU-validates and stores each one, by default in its append-only journal, shared by
``--sim-processes N`` processes (1 by default); ``--folders``: one process and a folder with two
files per certificate, ~1.4 ms more CPU each on this machine). ``--timeline``: committed and
acknowledged messages per half second.

Reported: certificates per second from the first issue to the last acknowledgement; p50/p99 from
a message's commit to its recorded acknowledgement; CPU milliseconds per certificate of each
process (producers, worker, simulator, the PostgreSQL backends of the bench database) — the 2
cores are shared, so CPU per certificate is the figure that survives a loaded machine.
``--no-audit`` replaces the audit log by a no-op; ``--split`` issues everything first, then
times delivery alone.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import event, func, select, text
from sqlalchemy.engine import make_url

from konsil.audit.service import Actor, AuditLog, verify_chain
from konsil.clock import SystemClock
from konsil.db import Database, upgrade
from konsil.identity.matricule import make_matricule
from konsil.runtime import freeze_heap
from tests.workflow.helpers import SECRET, certificate_cda, make_workflow
from workflow.cda.validation import validate_cda
from workflow.documents import DocumentStore, NewDocument
from workflow.models import OutboxMessage, new_id
from workflow.outbox import Outbox
from workflow.signing import KeyRing, public_key_pem, public_keys
from workflow.simulators.common import journal_submissions

TICK = os.sysconf("SC_CLK_TCK")


class NoAudit(AuditLog):
    async def record(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Job:
    url: str
    org_id: str
    account_id: str
    patients: list[tuple[str, str]]  # (id, matricule)
    indexes: list[int]
    concurrency: int
    validate: bool
    audit: bool
    profile: str | None


def spawn(cmd: list[str], env: dict[str, str], log: BinaryIO) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / TICK


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
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def drop_pg(admin_url: str, bench_url: str) -> None:
    """Drop the run's throw-away database (after its processes have stopped)."""
    import asyncpg

    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(bench_url).database}"')
    finally:
        await conn.close()


async def issue(job: Job, ready: Barrier) -> tuple[float, float, float]:
    """One producer: build (+ validate) outside, then sign, store, audit, enqueue in one tx.

    Like a web worker that has been running for a while, it starts with its connection pool
    open: ``concurrency`` connections are opened (and one certificate issued) before the run
    starts, so neither the connection setup nor the PostgreSQL backends' start-up (catalog
    caches, codec introspection) is counted in the run. Returns wall seconds, this process's
    CPU seconds and its PostgreSQL backends' CPU seconds, all from the start of the run."""
    clock = SystemClock()
    db = Database(job.url, pool_size=job.concurrency)
    backends: list[int] = []
    if not db.sqlite:

        @event.listens_for(db.engine.sync_engine, "connect")
        def _connected(dbapi_conn: Any, _record: Any) -> None:
            backends.append(dbapi_conn.driver_connection.get_server_pid())

    audit: AuditLog = AuditLog(clock) if job.audit else NoAudit(clock)
    documents = DocumentStore(clock, audit, KeyRing(SECRET, clock))
    outbox = Outbox(db, clock, audit, max_attempts=5)
    author = Actor(job.account_id)

    async def one(i: int) -> None:
        patient_id, matricule = job.patients[i % len(job.patients)]
        doc_id = new_id()
        xml = certificate_cda(matricule, doc_id)
        if job.validate and validate_cda(xml):
            raise RuntimeError("the builder's certificate does not validate")
        new = NewDocument(
            kind="sick-leave",
            type_code="DT-20002",
            patient_id=patient_id,
            organisation_id=job.org_id,
            content=xml,
            author_account_id=job.account_id,
            document_id=doc_id,
        )
        async with db.transaction() as s:
            if job.audit:  # as the issuers do: one statement on PostgreSQL
                await documents.do_issue(
                    s, author, new, outbox, [("cns", {"patient_matricule": matricule})]
                )
                return
            doc = await documents.do_create(s, author, new)
            await outbox.enqueue(
                s,
                "cns",
                {"patient_matricule": matricule},
                f"cns-{doc.id}",
                document_id=doc.id,
                author_account_id=job.account_id,
            )

    async def lane(k: int) -> None:
        for i in job.indexes[1 + k :: job.concurrency]:
            await one(i)

    try:
        await one(job.indexes[0])  # statement caches
        if not db.sqlite:  # the pool's connections, all open at once
            opened = [await db.engine.connect() for _ in range(job.concurrency)]
            for conn in opened:
                await conn.execute(text("SELECT 1"))
                await conn.close()  # back to the pool, still open
        freeze_heap()  # as `konsil serve` does once started
        await asyncio.to_thread(ready.wait)
        pg0 = sum(cpu_seconds(pid) for pid in backends)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(lane(k) for k in range(job.concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        return wall, cpu, sum(cpu_seconds(pid) for pid in backends) - pg0
    finally:
        await db.dispose()


def producer(job: Job, ready: Barrier, results: Any) -> None:
    if job.profile:
        import cProfile

        with cProfile.Profile(time.process_time) as prof:  # CPU time: waits don't count
            out = asyncio.run(issue(job, ready))
        prof.dump_stats(job.profile)
    else:
        out = asyncio.run(issue(job, ready))
    results.put(out)


class BackendCpu:
    """CPU of the bench database's PostgreSQL backends alive now (the worker's; the producers
    count their own before their backends end)."""

    def __init__(self, db: Database, url: str) -> None:
        self.db = db
        self.name = make_url(url).database
        self.last: dict[int, float] = {}

    async def sample(self) -> None:
        if self.db.sqlite:
            return
        async with self.db.session() as s:
            pids = (
                await s.execute(
                    text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": self.name}
                )
            ).scalars()
            for pid in pids:
                cpu = cpu_seconds(int(pid))
                if cpu:
                    self.last[int(pid)] = cpu

    def seconds(self, started: dict[int, float]) -> float:
        """Since the run started (``started``: the backends alive then, and their CPU)."""
        return sum(cpu - started.get(pid, 0.0) for pid, cpu in self.last.items())


def machine_cpu() -> list[int]:
    """Jiffies of all CPUs since boot by kind, from /proc/stat: user, nice, system, idle,
    iowait, irq, softirq, steal."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def machine_busy(before: list[int], after: list[int]) -> str:
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = max(1, sum(d))
    busy = total - d[3] - d[4]
    return (
        f"CPUs busy {busy / total:.0%} (every process on the machine; user {d[0] / total:.0%},"
        f" system {d[2] / total:.0%}, softirq {d[6] / total:.0%}, steal {d[7] / total:.0%})"
    )


async def setup(url: str, n: int, producers: int, trust: Path) -> tuple[list[Job], str]:
    if url.startswith("postgresql"):
        url = await fresh_pg(url)
    await upgrade(url)
    db = Database(url, pool_size=4)
    wf = await make_workflow(db, SystemClock())
    patients = [await wf.patient(i) for i in range(20)]
    async with db.transaction() as s:  # the organisation's signing key exists before the run
        await wf.keys.signer_for(s, wf.org.id)
    async with db.session() as s:  # the simulator's trust list (konsil documents export-keys)
        keys = await public_keys(s)
    write_trust(trust, keys)
    pairs = [(p.id, p.matricule) for p in patients]
    jobs = [
        Job(url, wf.org.id, wf.author_id, pairs, list(range(k, n, producers)), 0, False, True, None)
        for k in range(producers)
    ]
    await db.dispose()
    return jobs, url


def write_trust(folder: Path, keys: list[tuple[str, str, bytes]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key_id, _org, public in keys:
        (folder / f"{key_id}.pem").write_text(public_key_pem(public))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--producers", type=int, default=1, help="producer processes")
    ap.add_argument("--concurrency", type=int, default=16, help="transactions per producer")
    ap.add_argument("--validate", action="store_true", help="XSD + LU validation at issue")
    ap.add_argument("--no-audit", action="store_true")
    ap.add_argument("--split", action="store_true", help="issue everything first, then deliver")
    ap.add_argument(
        "--folders",
        action="store_true",
        help="the simulator stores a folder per certificate (default: its append-only journal)",
    )
    ap.add_argument(
        "--sim-processes",
        type=int,
        default=1,
        help="processes serving the CNS simulator (journal store only)",
    )
    ap.add_argument(
        "--worker-concurrency", type=int, default=64, help="the worker's deliveries in flight"
    )
    ap.add_argument(
        "--timeline", action="store_true", help="print issued/delivered per 0.5 s of the run"
    )
    ap.add_argument(
        "--profile",
        help="folder for cProfile stats of the producers (read with pstats or snakeviz)",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        run(args, url, tmp)


def run(args: argparse.Namespace, url: str, tmp: Path) -> None:
    admin_url = url
    jobs, url = asyncio.run(setup(url, args.n, args.producers, tmp / "trust"))
    try:
        deliver(args, jobs, url, tmp)
    finally:
        if url.startswith("postgresql"):
            asyncio.run(drop_pg(admin_url, url))


def deliver(args: argparse.Namespace, jobs: list[Job], url: str, tmp: Path) -> None:
    ref0 = reference_ms()
    jobs = [
        Job(
            j.url,
            j.org_id,
            j.account_id,
            j.patients,
            j.indexes,
            args.concurrency,
            args.validate,
            not args.no_audit,
            str(Path(args.profile) / f"producer{k}.prof") if args.profile else None,
        )
        for k, j in enumerate(jobs)
    ]
    port = free_port()
    env = {
        **os.environ,
        "KONSIL_WORKFLOW_CNS_URL": f"http://127.0.0.1:{port}/ecit/v1/certificates",
        "KONSIL_WORKFLOW_WORKER_BATCH": "200",
        "KONSIL_WORKFLOW_WORKER_CONCURRENCY": str(args.worker_concurrency),
        "KONSIL_LOG_LEVEL": "WARNING",
    }
    konsil = [sys.executable, "-m", "konsil.cli"]
    store = tmp / "cns"
    log = (tmp / "bench.log").open("ab")
    sim = [*konsil, "simulate", "cns", "--port", str(port), "--store", str(store)]
    sim += ["--trust", str(tmp / "trust")]  # it verifies every signature
    if not args.folders:
        sim.append("--journal")
        if args.sim_processes > 1:
            sim += ["--processes", str(args.sim_processes)]
    worker = [*konsil, "worker", "--database-url", url]
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(len(jobs) + 1)
    results = ctx.Queue()
    procs = [spawn(sim, env, log)]
    if not args.split:
        procs.append(spawn(worker, env, log))
    makers = [ctx.Process(target=producer, args=(j, ready, results)) for j in jobs]
    for m in makers:
        m.start()
    try:
        settle(procs)  # the simulator and the worker have imported everything and idle
        sim_pids = [procs[0].pid, *_children(procs[0].pid)]
        cpu0 = {p.pid: cpu_seconds(p.pid) for p in procs}
        cpu0.update({pid: cpu_seconds(pid) for pid in sim_pids})
        pg0 = asyncio.run(backends_now(url))
        busy0 = machine_cpu()
        ready.wait()  # the producers are warm (see ``issue``): the run starts now
        t0, started = time.perf_counter(), datetime.now(UTC)
        outs = [results.get() for _ in jobs]
        produce_s = max(o[0] for o in outs)
        producer_cpu = sum(o[1] for o in outs)
        producer_pg_cpu = sum(o[2] for o in outs)
        if args.split:  # the worker starts only now: its delivery rate alone
            procs.append(spawn(worker, env, log))
            cpu0[procs[-1].pid] = 0.0
            t0 = time.perf_counter()
        rows, total_s, worker_pg_cpu, chain = asyncio.run(measure(url, args.n, t0, pg0))
        # the run's certificates: not the producers' warm-up ones, committed before it started
        rows = [(c, d) for c, d in rows if c >= started]
        pg_cpu = producer_pg_cpu + worker_pg_cpu
        busy = machine_busy(busy0, machine_cpu())
        if args.timeline:
            print_timeline(rows)
        worker_cpu = cpu_seconds(procs[-1].pid) - cpu0[procs[-1].pid]
        sim_cpu = sum(cpu_seconds(pid) - cpu0[pid] for pid in sim_pids)
        lat = sorted((d - c).total_seconds() * 1000 for c, d in rows if d is not None)
        q = statistics.quantiles(lat, n=100)
        ref = (ref0 + reference_ms()) / 2
        kind = "postgresql" if url.startswith("postgresql") else "sqlite"
        stored = sum(1 for _ in store.glob("*/metadata.json")) + len(journal_submissions(store))
        n = len(rows)
        per = 1000 / n
        print(
            f"{kind} n={n} (+{args.n - n} warm-up) store={'folders' if args.folders else 'journal'}"
            f" simulator-processes={1 if args.folders else args.sim_processes}"
            f" producers={len(jobs)}x{args.concurrency}"
            f" validate-at-issue={'on' if args.validate else 'off'}"
            f" audit={'on' if not args.no_audit else 'off'}"
            f"{' split' if args.split else ''}:\n"
            f"  issued (build+sign+persist+enqueue) {n / produce_s:.0f}/s;"
            f" {'delivery alone' if args.split else 'end to end'} {n / total_s:.0f}"
            f" certificates/s; commit->ack p50 {q[49]:.0f} ms p99 {q[98]:.0f} ms;"
            f" simulator stored {stored}; audit chain ok={chain}\n"
            f"  CPU ms/certificate: producers {producer_cpu * per:.2f}, worker"
            f" {worker_cpu * per:.2f}, simulator {sim_cpu * per:.2f}, postgres backends"
            f" {pg_cpu * per:.2f}; total"
            f" {(producer_cpu + worker_cpu + sim_cpu + pg_cpu) * per:.2f}\n"
            f"  machine speed: validate_cda {ref:.2f} ms/doc now (~0.45 quiet; ~0.7 before the"
            f" LU profile index); total CPU /"
            f" that = {(producer_cpu + worker_cpu + sim_cpu + pg_cpu) * per / ref:.1f}\n"
            f"  {busy}",
            flush=True,
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        for m in makers:
            m.join(timeout=10)
        log.close()


def print_timeline(rows: list[Any]) -> None:
    """Messages committed and acknowledged per half second since the first commit."""
    start = min(c for c, _ in rows)
    made: dict[int, int] = {}
    acked: dict[int, int] = {}
    for c, d in rows:
        k = int((c - start).total_seconds() * 2)
        made[k] = made.get(k, 0) + 1
        if d is not None:
            k = int((d - start).total_seconds() * 2)
            acked[k] = acked.get(k, 0) + 1
    print("  t(s)  committed  acknowledged  backlog")
    backlog = 0
    for k in range(max([*made, *acked]) + 1):
        backlog += made.get(k, 0) - acked.get(k, 0)
        print(f"  {k / 2:4.1f}  {made.get(k, 0):9d}  {acked.get(k, 0):12d}  {backlog:7d}")


def reference_ms() -> float:
    """CPU ms of one validate_cda of a certificate, now, in this process: the machine's speed.

    On a quiet machine it is ~0.45 ms (~0.7 before the LU profile index); under other helpers'
    load every CPU figure inflates roughly in proportion, so CPU ms/certificate divided by this
    is comparable across runs (of the same code: validate_cda itself got faster).
    """
    xml = certificate_cda(make_matricule("19800101", 4), new_id())
    validate_cda(xml)
    c0 = time.process_time()
    for _ in range(100):
        validate_cda(xml)
    return (time.process_time() - c0) * 10


def settle(procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait until the started processes stop burning CPU (imports, migrations check) or 20 s."""
    time.sleep(1.0)
    deadline = time.monotonic() + 20
    last = sum(cpu_seconds(p.pid) for p in procs)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(cpu_seconds(p.pid) for p in procs)
        if now - last < 0.02:
            return
        last = now


def _children(pid: int) -> list[int]:
    try:
        out = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in out.split()]


async def wait_delivered(db: Database, n: int) -> list[Any]:
    while True:
        async with db.session() as s:
            done = (
                await s.execute(select(func.count()).where(OutboxMessage.status == "delivered"))
            ).scalar_one()
        if done >= n:
            break
        await asyncio.sleep(0.05)
    async with db.session() as s:
        return list(
            (
                await s.execute(
                    select(OutboxMessage.created_at, OutboxMessage.delivered_at).where(
                        OutboxMessage.status == "delivered"
                    )
                )
            ).all()
        )


async def measure(
    url: str, n: int, t0: float, pg0: dict[int, float]
) -> tuple[list[Any], float, float, str]:
    """Wait for every acknowledgement; then read PostgreSQL CPU and verify the audit chain."""
    db = Database(url, pool_size=2)
    try:
        backends = BackendCpu(db, url)
        rows = await wait_delivered(db, n)
        total_s = time.perf_counter() - t0
        await backends.sample()
        r = await verify_chain(db)
        return rows, total_s, backends.seconds(pg0), f"{r.ok} ({r.checked} events)"
    finally:
        await db.dispose()


async def backends_now(url: str) -> dict[int, float]:
    """The bench database's backends and their CPU before the run."""
    db = Database(url, pool_size=1)
    try:
        backends = BackendCpu(db, url)
        await backends.sample()
        return backends.last
    finally:
        await db.dispose()


if __name__ == "__main__":
    main()
