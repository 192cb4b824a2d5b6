"""`konsil demo` as a user runs it (README's `make run`): the login page serves and a demo
practitioner signs in through a real browser."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def demo_process(tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONSIL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "konsil.cli",
        "demo",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "var"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            if not raw:
                raise AssertionError("demo exited early:\n" + "".join(lines))
            lines.append(raw.decode())
            if raw.startswith(b"Press Ctrl+C"):
                break
        out = "".join(lines)
        logins = dict(re.findall(r"^  (\S+)\s+(\S+)$", out, re.MULTILINE))
        yield f"http://127.0.0.1:{port}", logins
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), timeout=20)


async def test_demo_serves_login_and_practitioner_signs_in(tmp_path: Path, browser: Any) -> None:
    async with demo_process(tmp_path) as (base, logins):
        assert {"admin", "dr.weber", "dr.schmit"} <= set(logins)
        page = await browser.new_page()
        resp = await page.goto(f"{base}/login")
        assert resp.status == 200
        await page.fill("#username", "dr.weber")
        await page.fill("#password", logins["dr.weber"])
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/")
        assert "Anne Weber" in await page.inner_text("main")
        # Wrong password: the form says so, in French by default
        await page.click("text=Se déconnecter")
        await page.fill("#username", "dr.weber")
        await page.fill("#password", "wrong-password")
        await page.click("button[type=submit]")
        assert "identifiant ou mot de passe incorrect" in await page.inner_text("[role=alert]")
    # The demo seeds once: a second start reuses the same logins
    async with demo_process(tmp_path) as (_, again):
        assert again == logins
