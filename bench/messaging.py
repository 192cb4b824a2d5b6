"""Matrix messaging load: N concurrently syncing matrix-nio clients in R rooms, all sending.

    python -m bench.messaging --url http://127.0.0.1:8081 [--database-url URL] [--pid PID]
        [--users 100] [--rooms 20] [--messages 20]

With --database-url the bench creates its accounts (bench0..benchN-1) in that database first (the
server must allow that many logins: start it with KONSIL_MATRIX_LOGIN_BURST=1000). Each client
long-polls /sync in its own task while it sends --messages messages into its room, one after the
other (or every --interval seconds, for latency under a given load). Prints throughput, send→delivery latency percentiles (measured in this process, one
clock), and the server's CPU seconds and peak RSS when --pid is given (Linux /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
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


class Bench:
    def __init__(
        self, url: str, users: int, rooms: int, messages: int, interval: float = 0.0
    ) -> None:
        self.interval = interval
        self.url = url
        self.n = users
        self.rooms_n = rooms
        self.messages = messages
        self.clients: list[AsyncClient] = []
        self.room_ids: list[str] = []
        self.sent_at: dict[str, float] = {}
        self.latencies: list[float] = []
        self.expected = 0
        self.delivered = 0
        self.done = asyncio.Event()
        self.stop = False
        self.sync_errors = 0

    async def setup(self) -> None:
        for i in range(self.n):
            c = AsyncClient(self.url, f"bench{i}")
            resp = await c.login(PASSWORD, device_name="bench")
            if not isinstance(resp, LoginResponse):
                raise SystemExit(f"login bench{i} failed: {resp}")
            self.clients.append(c)
        members: list[list[int]] = [[] for _ in range(self.rooms_n)]
        for i in range(self.n):
            members[i % self.rooms_n].append(i)
        for r in range(self.rooms_n):
            owner = self.clients[members[r][0]]
            invite = [self.clients[i].user_id for i in members[r][1:]]
            created = await owner.room_create(invite=invite, name=f"bench room {r}")
            if not isinstance(created, RoomCreateResponse):
                raise SystemExit(f"createRoom failed: {created}")
            self.room_ids.append(created.room_id)
            for i in members[r][1:]:
                joined = await self.clients[i].join(created.room_id)
                if not isinstance(joined, JoinResponse):
                    raise SystemExit(f"join failed: {joined}")
        # every message reaches the other members of its room
        self.expected = sum(len(m) * (len(m) - 1) * self.messages for m in members)
        for c in self.clients:
            await c.sync(timeout=0)

    async def sync_loop(self, c: AsyncClient) -> None:
        while not self.stop:
            resp: Any = await c.sync(timeout=30_000, sync_filter=FILTER)
            now = time.perf_counter()
            rooms = getattr(resp, "rooms", None)
            if rooms is None:
                self.sync_errors += 1
                if self.sync_errors == 1:
                    print(f"sync error: {resp}")
                continue
            for room in rooms.join.values():
                for ev in room.timeline.events:
                    body = getattr(ev, "body", None)
                    if ev.sender == c.user_id or not isinstance(body, str):
                        continue
                    t = self.sent_at.get(body)
                    if t is not None:
                        self.latencies.append(now - t)
                        self.delivered += 1
            if self.delivered >= self.expected:
                self.done.set()

    async def send_loop(self, i: int) -> int:
        c = self.clients[i]
        room = self.room_ids[i % self.rooms_n]
        if self.interval:
            await asyncio.sleep(self.interval * i / self.n)  # spread the clients out
        for k in range(self.messages):
            if self.interval and k:
                await asyncio.sleep(self.interval)
            body = f"bench {i} {k}"
            self.sent_at[body] = time.perf_counter()
            resp = await c.room_send(room, "m.room.message", {"msgtype": "m.text", "body": body})
            if not isinstance(resp, RoomSendResponse):
                raise SystemExit(f"send failed: {resp}")
        return self.messages

    async def run(self, pid: int | None) -> None:
        await self.setup()
        syncs = [asyncio.create_task(self.sync_loop(c)) for c in self.clients]
        cpu0 = proc_cpu_s(pid) if pid else 0.0
        me0 = time.process_time()
        t0 = time.perf_counter()
        sent = sum(await asyncio.gather(*(self.send_loop(i) for i in range(self.n))))
        t_sent = time.perf_counter() - t0
        try:
            await asyncio.wait_for(self.done.wait(), 120)
        except TimeoutError:
            print(f"warning: only {self.delivered}/{self.expected} deliveries arrived")
        t_all = time.perf_counter() - t0
        cpu1 = proc_cpu_s(pid) if pid else 0.0
        me1 = time.process_time()
        self.stop = True
        for t in syncs:
            t.cancel()
        await asyncio.gather(*syncs, return_exceptions=True)
        for c in self.clients:
            await c.close()
        ms = [x * 1000 for x in self.latencies]
        print(f"clients {self.n}, rooms {self.rooms_n}, messages sent {sent}")
        if self.sync_errors:
            print(f"sync errors: {self.sync_errors}")
        print(f"send throughput: {sent / t_sent:.0f} msg/s ({t_sent:.2f} s)")
        print(
            f"deliveries: {self.delivered}/{self.expected} in {t_all:.2f} s "
            f"({self.delivered / t_all:.0f} deliveries/s)"
        )
        print(
            f"send->delivery latency ms: p50 {pct(ms, 50):.1f}  p95 {pct(ms, 95):.1f}  "
            f"p99 {pct(ms, 99):.1f}  mean {statistics.fmean(ms) if ms else float('nan'):.1f}"
        )
        print(
            f"bench client CPU {me1 - me0:.2f} s during the run "
            f"({(me1 - me0) / t_all * 100:.0f}% of one core)"
        )
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
    args = ap.parse_args()
    if args.database_url:
        asyncio.run(provision(args.database_url, args.users))
    asyncio.run(Bench(args.url, args.users, args.rooms, args.messages, args.interval).run(args.pid))


if __name__ == "__main__":
    main()
