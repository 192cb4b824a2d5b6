"""Matrix messaging load: N concurrently syncing matrix-nio clients in R rooms, all sending.

    python -m bench.messaging --url http://127.0.0.1:8081 [--database-url URL] [--pid PID]
        [--users 100] [--rooms 20] [--messages 20] [--interval S] [--procs P]

With --database-url the bench creates its accounts (bench0..benchN-1) in that database first (the
server must allow that many logins: start it with KONSIL_MATRIX_LOGIN_BURST=1000). Each client
long-polls /sync in its own task while it sends --messages messages into its room, one after the
other (or every --interval seconds, for latency under a given load).

The clients run in --procs processes (default 1), so that one Python event loop parsing the sync
answers of 100 clients (matrix-nio validates each against a JSON schema) does not put its own
queueing delays into the latencies it measures. Send and receipt times are read with
``time.monotonic()`` (CLOCK_MONOTONIC: one clock for every process of the machine); a delivery is
timed when matrix-nio has parsed the sync answer carrying it. Each process also reports how late
its event loop ran a 5 ms timer (its own share of the latency). Prints throughput, send→delivery
latency percentiles, and the server's CPU seconds and peak RSS when --pid is given (Linux /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio import AsyncClient, JoinResponse, LoginResponse, RoomCreateResponse, RoomSendResponse

# a generous timeline so that no message is hidden behind a "limited" gap
FILTER = {"room": {"timeline": {"limit": 1000}}}
PASSWORD = "bench-password-0123456789"  # noqa: S105 - throw-away bench accounts


async def provision(database_url: str, n: int) -> None:
    from sqlalchemy import select

    from konsil.audit.service import SYSTEM, AuditLog
    from konsil.auth.passwords import PasswordHasher
    from konsil.clock import SystemClock
    from konsil.config import load_config
    from konsil.db import Database
    from konsil.identity.models import Account
    from konsil.identity.service import IdentityService, NewAccount

    db = Database(database_url)
    try:
        identity = IdentityService(
            db,
            SystemClock(),
            # the cost the server is configured with (KONSIL_AUTH_PASSWORD_*), as its accounts
            PasswordHasher.configured(load_config().auth),
            AuditLog(SystemClock()),
        )
        async with db.session() as s:
            have = set((await s.execute(select(Account.username))).scalars())
        for i in range(n):
            name = f"bench{i}"
            if name not in have:
                await identity.do_create_account(
                    SYSTEM, NewAccount(username=name, password=PASSWORD, role="practitioner")
                )
    finally:
        await db.dispose()


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


@dataclass(frozen=True)
class Member:
    index: int  # 0..users-1: sets the client's place in the sending schedule
    user_id: str
    device_id: str
    token: str
    room_id: str
    expected: int  # deliveries this client waits for


@dataclass
class Plan:
    url: str
    users: int
    messages: int
    interval: float
    start_at: float  # time.monotonic() at which every process starts sending
    members: list[Member]


@dataclass
class Outcome:
    """What one process measured (merged by the parent)."""

    sent_at: dict[str, float] = field(default_factory=dict)
    received: list[tuple[str, float]] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    sent_done_at: float = 0.0
    sync_errors: int = 0
    missing: int = 0


async def setup(url: str, users: int, rooms: int, messages: int) -> list[Member]:
    """Log every client in, create the rooms and join them; returns who is where."""
    clients: list[AsyncClient] = []
    try:
        for i in range(users):
            c = AsyncClient(url, f"bench{i}")
            clients.append(c)
            resp = await c.login(PASSWORD, device_name="bench")
            if not isinstance(resp, LoginResponse):
                raise SystemExit(f"login bench{i} failed: {resp}")
        members: list[list[int]] = [[] for _ in range(rooms)]
        for i in range(users):
            members[i % rooms].append(i)
        room_ids: list[str] = []
        for r in range(rooms):
            owner = clients[members[r][0]]
            invite = [clients[i].user_id for i in members[r][1:]]
            created = await owner.room_create(invite=invite, name=f"bench room {r}")
            if not isinstance(created, RoomCreateResponse):
                raise SystemExit(f"createRoom failed: {created}")
            room_ids.append(created.room_id)
            for i in members[r][1:]:
                joined = await clients[i].join(created.room_id)
                if not isinstance(joined, JoinResponse):
                    raise SystemExit(f"join failed: {joined}")
        # every message reaches the other members of its room
        return [
            Member(
                i,
                c.user_id,
                c.device_id,
                c.access_token,
                room_ids[i % rooms],
                (len(members[i % rooms]) - 1) * messages,
            )
            for i, c in enumerate(clients)
        ]
    finally:
        for c in clients:
            await c.close()


class Driver:
    """Some of the clients, in one process: each syncs in a loop and sends on its schedule."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.out = Outcome()
        self.clients: list[AsyncClient] = []
        self.pending = sum(m.expected for m in plan.members)
        self.done = asyncio.Event()
        self.stop = False

    async def sync_loop(self, c: AsyncClient) -> None:
        while not self.stop:
            resp: Any = await c.sync(timeout=30_000, sync_filter=FILTER)
            now = time.monotonic()
            rooms = getattr(resp, "rooms", None)
            if rooms is None:
                self.out.sync_errors += 1
                if self.out.sync_errors == 1:
                    print(f"sync error: {resp}")
                continue
            for room in rooms.join.values():
                for ev in room.timeline.events:
                    body = getattr(ev, "body", None)
                    if ev.sender == c.user_id or not isinstance(body, str):
                        continue
                    if body.startswith("bench "):
                        self.out.received.append((body, now))
                        self.pending -= 1
            if self.pending <= 0:
                self.done.set()

    async def send_loop(self, c: AsyncClient, m: Member) -> None:
        plan = self.plan
        if plan.interval:
            # spread the clients out
            await asyncio.sleep(max(0.0, plan.start_at - time.monotonic()))
            await asyncio.sleep(plan.interval * m.index / plan.users)
        for k in range(plan.messages):
            if plan.interval and k:
                await asyncio.sleep(plan.interval)
            body = f"bench {m.index} {k}"
            t = self.out.sent_at[body] = time.monotonic()
            resp = await c.room_send(
                m.room_id, "m.room.message", {"msgtype": "m.text", "body": body}
            )
            if not isinstance(resp, RoomSendResponse):
                raise SystemExit(f"send failed: {resp}")
            self.out.send_ms.append((time.monotonic() - t) * 1000)

    async def lag_monitor(self) -> None:
        """How late this process's event loop runs a 5 ms timer: delays inside the measured
        latencies that are the bench's own."""
        while not self.stop:
            t = time.monotonic()
            await asyncio.sleep(0.005)
            self.out.lags_ms.append((time.monotonic() - t - 0.005) * 1000)

    async def run(self) -> Outcome:
        plan = self.plan
        for m in plan.members:
            c = AsyncClient(plan.url, m.user_id)
            c.restore_login(m.user_id, m.device_id, m.token)
            self.clients.append(c)
            await c.sync(timeout=0)
        # what exists now lives to the end: keep the collector from scanning it over and over
        gc.collect()
        gc.freeze()
        syncs = [asyncio.create_task(self.sync_loop(c)) for c in self.clients]
        await asyncio.sleep(max(0.0, plan.start_at - time.monotonic()))
        lagger = asyncio.create_task(self.lag_monitor())
        cpu0 = time.process_time()
        await asyncio.gather(
            *(self.send_loop(c, m) for c, m in zip(self.clients, plan.members, strict=True))
        )
        self.out.sent_done_at = time.monotonic()
        try:
            await asyncio.wait_for(self.done.wait(), 120)
        except TimeoutError:
            self.out.missing = self.pending
        self.out.cpu_s = time.process_time() - cpu0
        self.stop = True
        await lagger
        for t in syncs:
            t.cancel()
        await asyncio.gather(*syncs, return_exceptions=True)
        for c in self.clients:
            await c.close()
        return self.out


def drive(plan: Plan) -> Outcome:
    return asyncio.run(Driver(plan).run())


async def run(args: argparse.Namespace) -> None:
    members = await setup(args.url, args.users, args.rooms, args.messages)
    procs = max(1, min(args.procs, args.users))
    # the worker processes start (import matrix-nio, log in from the tokens, first sync) before
    # the common start time
    start_at = time.monotonic() + 5 + 2 * procs + args.users * 0.03
    plans = [
        Plan(args.url, args.users, args.messages, args.interval, start_at, members[p::procs])
        for p in range(procs)
    ]
    pid: int | None = args.pid
    loop = asyncio.get_running_loop()
    if procs == 1:
        work: Any = asyncio.ensure_future(Driver(plans[0]).run())
        pool = None
    else:
        pool = ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"))
        work = asyncio.gather(*(loop.run_in_executor(pool, drive, plan) for plan in plans))
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    cpu0 = proc_cpu_s(pid) if pid else 0.0
    t0 = time.monotonic()
    result = await work
    outcomes: list[Outcome] = [result] if procs == 1 else list(result)
    t_all = time.monotonic() - t0
    cpu1 = proc_cpu_s(pid) if pid else 0.0
    if pool is not None:
        pool.shutdown()

    sent_at: dict[str, float] = {}
    for o in outcomes:
        sent_at.update(o.sent_at)
    ms = [(t - sent_at[body]) * 1000 for o in outcomes for body, t in o.received if body in sent_at]
    sent = len(sent_at)
    expected = sum(m.expected for m in members)
    t_sent = max(o.sent_done_at for o in outcomes) - t0
    send_ms = [x for o in outcomes for x in o.send_ms]
    lags = [x for o in outcomes for x in o.lags_ms]
    me = sum(o.cpu_s for o in outcomes)
    print(f"clients {args.users} in {procs} process(es), rooms {args.rooms}, messages sent {sent}")
    errors = sum(o.sync_errors for o in outcomes)
    if errors:
        print(f"sync errors: {errors}")
    if any(o.missing for o in outcomes):
        print(f"warning: only {len(ms)}/{expected} deliveries arrived")
    print(f"send throughput: {sent / t_sent:.0f} msg/s ({t_sent:.2f} s)")
    print(f"deliveries: {len(ms)}/{expected} in {t_all:.2f} s ({len(ms) / t_all:.0f} deliveries/s)")
    print(
        f"send->delivery latency ms: p50 {pct(ms, 50):.1f}  p95 {pct(ms, 95):.1f}  "
        f"p99 {pct(ms, 99):.1f}  mean {statistics.fmean(ms) if ms else float('nan'):.1f}"
    )
    print(
        f"send request ms: p50 {pct(send_ms, 50):.1f}  p95 {pct(send_ms, 95):.1f}  "
        f"p99 {pct(send_ms, 99):.1f}"
    )
    print(
        f"bench event-loop lag ms (5 ms timer): p50 {pct(lags, 50):.1f}  p99 {pct(lags, 99):.1f}"
        f"  max {max(lags, default=float('nan')):.1f}"
    )
    print(f"bench client CPU {me:.2f} s during the run ({me / t_all * 100:.0f}% of one core)")
    if pid:
        cpu = cpu1 - cpu0
        print(
            f"server CPU {cpu:.2f} s during the run ({cpu / max(sent, 1) * 1000:.1f} ms/message); "
            f"peak RSS {proc_peak_rss_mb(pid):.0f} MB"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--database-url", dest="database_url")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--rooms", type=int, default=20)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds each client waits between its sends (0: send as fast as possible)",
    )
    ap.add_argument(
        "--procs", type=int, default=1, help="processes the clients are spread over (default 1)"
    )
    args = ap.parse_args()
    if args.database_url:
        asyncio.run(provision(args.database_url, args.users))
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
