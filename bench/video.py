"""Teleconsultation numbers.

    python -m bench.video [--rounds 10] [--sockets 1000]

1. Invitation click → first decoded frame on both sides (median of ``--rounds``, loopback):
   a real server (aiohttp, SQLite), headless Chromium with fake camera/microphone (Playwright):
   the patient opens the link, confirms identity and consent (one script call fills and submits
   the form; ``--typed``: Playwright fill/check/click), runs the pre-call check against
   the server's aiortc echo peer, waits; the doctor admits from the live waiting room (a script in the page clicks "Admit" as
   soon as the patient is listed with the check result); both
   pages report the first picture of the other (``loadeddata`` of the remote <video>).
   Also printed: admit click → first frame on both sides (call set-up alone), and a breakdown:
   the median time after the click of each step (bench steps, and the ``konsilVideo.marks``
   each page records: media, check offer/answer/first echo frame/done, socket, offer,
   connected, first frame; ``--events``: each page's signalling and connection events per
   round).
2. Concurrently open signalling WebSockets held by one server process (``konsil serve`` in a
   subprocess) and its resident memory (VmRSS) before and with the sockets open.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from konsil import appkeys as K
from konsil.app import create_app
from konsil.audit.service import SYSTEM, Actor
from konsil.auth.passwords import FAST_FOR_TESTS, PasswordHasher
from konsil.clock import SystemClock
from konsil.config import Config
from konsil.db import Database, upgrade
from konsil.identity.matricule import make_matricule
from konsil.identity.service import NewAccount
from video.domain.service import VideoService, check_schedule
from video.web import SERVICE

SECRET = secrets.token_urlsafe(32)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-quic",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def schedule_form(seq: int, when: str) -> dict[str, str]:
    return {
        "starts_at": when,
        "matricule": make_matricule("19800402", seq % 1000),
        "birth_date": "1980-04-02",
        "given_name": "Bench",
        "family_name": f"Patient{seq}",
    }


ENTER = """() => {
  document.getElementById("f-birth_date").value = "1980-04-02";
  document.getElementById("f-consent").checked = true;
  document.getElementById("entry-submit").click();
}"""


# In the doctor's page: click "Admit" the moment the patient's entry shows the check result
# (no driver polling in between); resolves with the click time.
ADMIT = """(id) => new Promise((resolve) => {
  const ready = () => {
    const li = document.querySelector(`li[data-appointment='${id}']`);
    const btn = li && li.querySelector("form.admit button");
    return btn && li.querySelector(".check").textContent.includes("camera") ? btn : null;
  };
  const go = (btn) => { const at = Date.now(); btn.click(); resolve(at); };
  const now = ready();
  if (now) { go(now); return; }
  const obs = new MutationObserver(() => {
    const btn = ready();
    if (btn) { obs.disconnect(); go(btn); }
  });
  obs.observe(document.getElementById("lobby-list"), { childList: true, subtree: true, characterData: true });
})"""


async def first_frame(rounds: int, tmp: Path, typed: bool, events: bool = False) -> None:
    from playwright.async_api import async_playwright

    url = f"sqlite+aiosqlite:///{tmp / 'ff.db'}"
    await upgrade(url)
    port = free_port()
    cfg = Config(database_url=url, data_dir=str(tmp), secret_key=SECRET, port=port)
    app = create_app(cfg, hasher=PasswordHasher(FAST_FOR_TESTS))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    try:
        doctor = await app[K.IDENTITY].do_create_account(
            SYSTEM, NewAccount("drbench", "bench-password-0123456789", "practitioner")
        )
        svc = app[SERVICE]
        totals: list[float] = []
        setups: list[float] = []
        steps: dict[str, list[float]] = {}
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            lang = [{"name": "konsil_lang", "value": "en", "url": base}]
            dctx = await browser.new_context()
            await dctx.add_cookies(lang)  # type: ignore[arg-type]
            doc = await dctx.new_page()
            await doc.goto(f"{base}/login")
            await doc.fill("#username", "drbench")
            await doc.fill("#password", "bench-password-0123456789")
            await doc.click("main button[type=submit]")
            await doc.wait_for_url(f"{base}/")
            for i in range(rounds):
                now = SystemClock().now()
                when = (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M+00:00")
                appt = await svc.do_schedule(
                    Actor(doctor.id), check_schedule(schedule_form(i + 1, when), now)
                )
                inv = await svc.do_invite(Actor(doctor.id), appt.id)
                await doc.goto(f"{base}/video")
                pctx = await browser.new_context()
                await pctx.add_cookies(lang)  # type: ignore[arg-type]
                pat = await pctx.new_page()
                click = time.time() * 1000
                await pat.goto(f"{base}/video/join/{inv.token}")
                bench = {"join page loaded": time.time() * 1000}
                if typed:  # three driver actions (each waits for the element to be stable)
                    await pat.fill("#f-birth_date", "1980-04-02")
                    await pat.check("#f-consent")
                    bench["identity + consent submitted"] = time.time() * 1000
                    await pat.click("#entry-submit")
                else:  # the same input in one driver round trip: the page's time, not the driver's
                    bench["identity + consent submitted"] = time.time() * 1000
                    await pat.evaluate(ENTER)
                # The doctor admits as soon as the patient is listed with the check's result.
                admit = await asyncio.wait_for(doc.evaluate(ADMIT, appt.id), 60)
                bench["admit clicked"] = admit
                await doc.wait_for_url(f"{base}/video/call/{appt.id}")
                ff = "() => !!window.konsilVideo.firstFrameAt"
                try:
                    await doc.wait_for_function(ff, polling=20, timeout=60_000)
                    await pat.wait_for_function(ff, polling=20, timeout=60_000)
                except Exception:  # say what each page went through, then stop
                    for side, page in (("patient", pat), ("doctor", doc)):
                        state = await page.evaluate("window.konsilVideo.state()")
                        print(f"round {i + 1}, {side}: {state}", file=sys.stderr)
                    raise
                d = await doc.evaluate("window.konsilVideo.firstFrameAt")
                p = await pat.evaluate("window.konsilVideo.firstFrameAt")
                totals.append(max(d, p) - click)
                setups.append(max(d, p) - admit)
                marks = {f"bench: {k}": v for k, v in bench.items()}
                for side, page in (("patient", pat), ("doctor", doc)):
                    got = await page.evaluate("window.konsilVideo.marks")
                    marks.update({f"{side}: {k}": v for k, v in got.items()})
                for k, v in marks.items():
                    steps.setdefault(k, []).append(max(v - click, 0.0))
                if events:  # what each page went through (signalling, connection states)
                    for side, page in (("patient", pat), ("doctor", doc)):
                        state = await page.evaluate("window.konsilVideo.state()")
                        print(f"round {i + 1}, {side}: {' '.join(state['events'])}")
                await doc.click("#btn-hangup")
                await doc.wait_for_url(f"{base}/video/appointments/{appt.id}/after")
                await pctx.close()
            await browser.close()
        print(
            f"invitation click -> first frame both sides, median of {rounds}: "
            f"{statistics.median(totals):.0f} ms (min {min(totals):.0f}, max {max(totals):.0f})"
            " [includes identity form, consent and the pre-call echo check]"
        )
        print(
            f"admit click -> first frame both sides, median of {rounds}: "
            f"{statistics.median(setups):.0f} ms (min {min(setups):.0f}, max {max(setups):.0f})"
        )
        print(
            "breakdown: median ms after the invitation click (step; + since the previous one;"
            " 0 = before the click)"
        )
        prev = 0.0
        for name, at in sorted(
            ((k, statistics.median(v)) for k, v in steps.items()), key=lambda kv: kv[1]
        ):
            print(f"  {at:7.0f}  (+{at - prev:5.0f})  {name}")
            prev = at
    finally:
        await runner.cleanup()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def sockets(n: int, tmp: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url = f"sqlite+aiosqlite:///{tmp / 'ws.db'}"
    await upgrade(url)
    db = Database(url)
    clock = SystemClock()
    from konsil.audit.service import AuditLog
    from konsil.config import VideoConfig
    from konsil.identity.service import IdentityService

    audit = AuditLog(clock)
    ident = IdentityService(db, clock, PasswordHasher(FAST_FOR_TESTS), audit)
    doctor = await ident.do_create_account(
        SYSTEM, NewAccount("drws", "bench-password-0123456789", "practitioner")
    )
    svc = VideoService(db, clock, audit, VideoConfig(), SECRET, None)
    cookies: list[tuple[str, str]] = []
    t = time.perf_counter()
    when = (clock.now() + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M+00:00")
    for i in range(n):
        appt = await svc.do_schedule(
            Actor(doctor.id), check_schedule(schedule_form(i + 1, when), clock.now())
        )
        inv = await svc.do_invite(Actor(doctor.id), appt.id)
        _guest, secret = await svc.do_enter(
            inv.token, {"birth_date": "1980-04-02", "consent": "yes"}, "127.0.0.1"
        )
        cookies.append((appt.id, secret))
    await db.dispose()
    print(f"prepared {n} admitted-to-waiting-room guests in {time.perf_counter() - t:.1f} s")

    port = free_port()
    env = dict(
        os.environ,
        KONSIL_DATABASE_URL=url,
        KONSIL_PORT=str(port),
        KONSIL_SECRET_KEY=SECRET,
        KONSIL_LOG_LEVEL="WARNING",
        KONSIL_DATA_DIR=str(tmp),
    )
    exe = Path(sys.executable).with_name("konsil")
    proc = await asyncio.create_subprocess_exec(
        str(exe), "serve", env=env, stdout=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as probe:
            for _ in range(100):
                try:
                    async with probe.get(f"{base}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
        idle = rss_mib(proc.pid)
        conn = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(connector=conn)
        opened: list[Any] = []
        t = time.perf_counter()
        sem = asyncio.Semaphore(50)

        async def open_one(appt: str, secret: str) -> None:
            async with sem:
                ws = await session.ws_connect(
                    f"{base}/video/ws/{appt}",
                    headers={"Cookie": f"konsil_video_guest={secret}"},
                    heartbeat=None,
                )
                hello = await ws.receive_json()
                assert hello["type"] == "hello"
                opened.append(ws)

        await asyncio.gather(*(open_one(a, s) for a, s in cookies))
        took = time.perf_counter() - t
        await asyncio.sleep(1)
        held = rss_mib(proc.pid)
        alive = sum(1 for ws in opened if not ws.closed)
        print(f"signalling WebSockets open and held: {alive} of {n} (opened in {took:.1f} s)")
        print(
            f"server RSS: {idle:.1f} MiB idle -> {held:.1f} MiB with {alive} sockets "
            f"({(held - idle) * 1024 / max(alive, 1):.1f} KiB per socket)"
        )
        for ws in opened:
            await ws.close()
        await session.close()
    finally:
        proc.terminate()
        await proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--sockets", type=int, default=1000)
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument(
        "--typed",
        action="store_true",
        help="fill the entry form with Playwright fill/check/click (slower driver round trips)",
    )
    ap.add_argument("--events", action="store_true", help="print each page's events per round")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_browser:
            await first_frame(args.rounds, tmp, args.typed, args.events)
        if args.sockets:
            await sockets(args.sockets, tmp)


if __name__ == "__main__":
    asyncio.run(main())
