"""The CNS simulator served by several processes (``konsil simulate cns --processes N
--journal``): they share one journal store, so a key is accepted once and references are
numbered once, whichever process a request reaches."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.workflow.test_simulators import delivery
from workflow.cda.xsd import schema_available
from workflow.connectors.cns import CnsConnector
from workflow.simulators import cns
from workflow.simulators.common import SubmissionStore, journal_submissions

pytestmark = pytest.mark.skipif(
    not schema_available(), reason="CDA schema not found: set KONSIL_CDA_SCHEMA_DIR"
)


def test_two_stores_on_one_journal_see_each_others_submissions(tmp_path: Path) -> None:
    a = SubmissionStore(tmp_path, journal=True)
    b = SubmissionStore(tmp_path, journal=True)  # another process's view of the same journal
    try:
        with a.exclusive():
            a.put("k1", b"<one/>", "document.xml", {"document_id": "d1"})
        assert b.get("k1") is None  # not read yet
        with b.exclusive():
            assert b.get("k1") is not None and b.count == 1  # caught up under the lock
            b.put("k2", b"<two/>", "document.xml", {"document_id": "d2"})
            b.annotate("k1", {"status": "replaced", "replaced_by": "d2"})
        with a.exclusive():
            assert a.count == 2
            assert a.get("k1") == {
                "document_id": "d1",
                "dedupe_key": "k1",
                "file": "document.xml",
                "status": "replaced",
                "replaced_by": "d2",
            }
        assert [m["document_id"] for m, _ in journal_submissions(tmp_path)] == ["d1", "d2"]
    finally:
        a.close()
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "konsil.cli", "simulate", "cns"),
            *("--port", str(port), "--store", str(tmp_path / "cns"), "--journal"),
            *("--processes", "3"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "KONSIL_LOG_LEVEL": "WARNING"},
    )
    url = f"http://127.0.0.1:{port}{cns.PATH}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline, "the simulator did not start"
            time.sleep(0.1)
    try:
        yield url, proc
    finally:
        kids = children(proc.pid)
        proc.terminate()
        proc.wait(timeout=10)
        for pid in kids:  # the parent stops its children
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not Path(f"/proc/{pid}").exists()


async def test_processes_accept_each_key_once_and_number_references_once(
    simulator: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    url, proc = simulator
    pids = [proc.pid, *children(proc.pid)]
    assert len(pids) == 3
    cpu0 = {pid: cpu_ticks(pid) for pid in pids}
    certificates = [delivery() for _ in range(30)]

    async def send(d: object) -> tuple[str, str | None]:
        # a connection per request: the kernel spreads connections over the processes
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as h:
            res = await CnsConnector(h, url).deliver(d)  # type: ignore[arg-type]
            assert res.outcome == "delivered", res.error
            return d.idempotency_key, res.reference  # type: ignore[attr-defined]

    # every certificate sent 4 times at once: the copies race in different processes
    answers = await asyncio.gather(*(send(d) for d in certificates for _ in range(4)))
    by_key: dict[str, set[str | None]] = {}
    for key, ref in answers:
        by_key.setdefault(key, set()).add(ref)
    assert all(len(refs) == 1 for refs in by_key.values())  # one answer per key
    stored = journal_submissions(tmp_path / "cns")
    assert sorted(m["idempotency_key"] for m, _ in stored) == sorted(by_key)  # each once
    refs = sorted(m["acknowledgement"]["cns_reference"] for m, _ in stored)
    assert refs == [f"CNS-CIT-{i:08d}" for i in range(1, 31)]  # numbered once, no gap
    assert {m["acknowledgement"]["cns_reference"] for m, _ in stored} == {
        next(iter(r)) for r in by_key.values()
    }
    # each process did some of the work (it was idle before)
    assert all(cpu_ticks(pid) > cpu0[pid] for pid in pids)
