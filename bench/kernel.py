"""Kernel hot paths: Argon2id cost per login and audit-chain appends per second.

    python -m bench.kernel [--database-url URL] [--n 2000]

Without --database-url a throw-away SQLite file is used.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from konsil.audit.service import Actor, AuditLog, verify_chain
from konsil.auth.passwords import INTERACTIVE, PasswordHasher
from konsil.clock import SystemClock
from konsil.db import Database, upgrade


async def bench_audit(url: str, n: int, concurrency: int) -> None:
    await upgrade(url)
    db = Database(url)
    audit = AuditLog(SystemClock())
    latencies: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            t = time.perf_counter()
            async with db.transaction() as s:
                await audit.record(s, Actor("bench"), "bench.append", patient_id="p1")
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    done = len(latencies)
    t = time.perf_counter()
    result = await verify_chain(db)
    verify_s = time.perf_counter() - t
    await db.dispose()
    q = statistics.quantiles(latencies, n=100)
    print(
        f"audit append ({url.split(':')[0]}, {concurrency} concurrent): {done / elapsed:.0f}/s, "
        f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms"
    )
    print(
        f"audit verify: {result.checked} rows in {verify_s:.2f} s ({result.checked / verify_s:.0f}/s), ok={result.ok}"
    )


def bench_argon2(rounds: int = 10) -> None:
    hasher = PasswordHasher(INTERACTIVE)
    stored = hasher.hash_sync("correct horse battery staple")
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        hasher.verify_sync(stored, "correct horse battery staple")
        times.append(time.perf_counter() - t)
    print(f"argon2id verify (interactive profile): median {statistics.median(times) * 1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    bench_argon2()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        asyncio.run(bench_audit(url, args.n, args.concurrency))


if __name__ == "__main__":
    main()
