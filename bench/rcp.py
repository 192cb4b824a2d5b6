"""RCP API hot paths over HTTP with bearer tokens (as a hospital record system calls it):
case submissions per second, scheduling, and racing decisions (exactly one may win).

    python -m bench.rcp [--database-url URL] [--n 200] [--concurrency 8]

Without --database-url a throw-away SQLite file is used. Password hashing uses the fast test
parameters: this measures the RCP path, not Argon2id.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from konsil import appkeys as K
from konsil.app import create_app
from konsil.audit.service import SYSTEM
from konsil.auth.passwords import FAST_FOR_TESTS, PasswordHasher
from konsil.config import Config
from konsil.db import upgrade
from konsil.identity.matricule import make_matricule
from konsil.identity.service import NewAccount, NewPatient

FICHE = {
    "question": "Adjuvant treatment?",
    "icd10": "C50.4",
    "origin": "primary",
    "ecog": 1,
    "tnm_kind": "p",
    "tnm_t": "T2",
    "tnm_n": "N0",
    "tnm_m": "M0",
    "stage_group": "IIA",
    "tnm_edition": 8,
    "patient_informed": True,
}
DECISION = {"proposal": ["surgery"], "guideline_conform": True, "conclusion": "Surgery."}


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def run(url: str, data_dir: str, n: int, concurrency: int) -> None:
    await upgrade(url)
    app = create_app(
        Config(database_url=url, data_dir=data_dir, secret_key=secrets.token_hex(32)),
        hasher=PasswordHasher(FAST_FOR_TESTS),
    )
    server = TestServer(app)
    await server.start_server()
    try:
        tokens: dict[str, str] = {}
        ids: dict[str, str] = {}
        for name, role, spec in (
            ("coord", "coordinator", None),
            ("chair", "practitioner", "surgery"),
            ("mo", "practitioner", "medical-oncology"),
            ("ro", "practitioner", "radiation-oncology"),
            ("gp", "practitioner", "general-practice"),
        ):
            acc = await app[K.IDENTITY].do_create_account(
                SYSTEM, NewAccount(name, f"pw-{name}-0123456789", role, specialty=spec)
            )
            async with app[K.DB].transaction() as s:
                tokens[name] = await app[K.AUTH].do_create_api_token(s, acc.id, "bench")
            ids[name] = acc.id
        matricules = []
        for i in range(20):
            m = make_matricule("19600101", 100 + i)
            await app[K.IDENTITY].do_create_patient(
                SYSTEM, NewPatient(m, "P", f"Bench{i}", date(1960, 1, 1), "U")
            )
            matricules.append(m)
        base = str(server.make_url("/api/v1/rcp"))
        async with aiohttp.ClientSession() as http:

            async def call(who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
                async with http.request(
                    method,
                    base + path,
                    json=body,
                    headers={"Authorization": f"Bearer {tokens[who]}"},
                ) as r:
                    return r.status, await r.json()

            _, board = await call(
                "coord", "POST", "/boards", {"name": "B", "tumour_domain": "breast"}
            )
            for who in ("chair", "mo", "ro"):
                await call(
                    "coord",
                    "POST",
                    f"/boards/{board['id']}/members",
                    {"username": who, "chair": who == "chair"},
                )
            _, sess = await call(
                "coord",
                "POST",
                f"/boards/{board['id']}/sessions",
                {
                    "starts_at": "2099-01-06T12:30",
                    "capacity": 200,
                    "deadline_hours": 0,
                    "place": "Room",
                },
            )
            for who in ("chair", "mo", "ro"):
                await call(
                    "coord", "POST", f"/sessions/{sess['id']}/attendance", {"account_id": ids[who]}
                )

            case_ids: list[str] = []
            lat: list[float] = []

            async def submitter(k: int) -> None:
                for i in range(k):
                    t = time.perf_counter()
                    status, case = await call(
                        "gp",
                        "POST",
                        "/cases",
                        {
                            "board_id": board["id"],
                            "matricule": matricules[i % 20],
                            "submit": True,
                            "fiche": FICHE,
                        },
                    )
                    lat.append(time.perf_counter() - t)
                    assert status == 201, case
                    case_ids.append(case["id"])

            t0 = time.perf_counter()
            await asyncio.gather(*(submitter(n // concurrency) for _ in range(concurrency)))
            el = time.perf_counter() - t0
            print(
                f"submit case (create+submit, audited): {len(lat) / el:.1f}/s with {concurrency} clients; "
                f"median {statistics.median(lat) * 1000:.1f} ms, p99 {pct(lat, 0.99):.1f} ms"
            )

            sched: list[float] = []

            async def scheduler(chunk: list[str]) -> None:
                for cid in chunk:
                    t = time.perf_counter()
                    status, body = await call(
                        "coord",
                        "POST",
                        f"/cases/{cid}/transitions",
                        {"action": "schedule", "session_id": sess["id"]},
                    )
                    sched.append(time.perf_counter() - t)
                    assert status == 200, body

            chunks = [case_ids[i::concurrency] for i in range(concurrency)]
            t0 = time.perf_counter()
            await asyncio.gather(*(scheduler(c) for c in chunks))
            el = time.perf_counter() - t0
            print(
                f"schedule case (agenda placement, audited): {len(sched) / el:.1f}/s; "
                f"median {statistics.median(sched) * 1000:.1f} ms, p99 {pct(sched, 0.99):.1f} ms"
            )

            races = case_ids[: min(50, len(case_ids))]
            outcomes: list[int] = []
            t0 = time.perf_counter()
            for cid in races:
                r = await asyncio.gather(
                    call("chair", "POST", f"/cases/{cid}/decision", DECISION),
                    call("coord", "POST", f"/cases/{cid}/decision", DECISION),
                )
                outcomes += sorted(x[0] for x in r)
            el = time.perf_counter() - t0
            wins, conflicts = outcomes.count(200), outcomes.count(409)
            print(
                f"racing decisions: {len(races)} cases x 2 concurrent -> {wins} won, {conflicts} conflicts, "
                f"other {len(outcomes) - wins - conflicts}; {len(races) / el:.1f} races/s"
            )
    finally:
        await server.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url", default="")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        asyncio.run(run(url, tmp, args.n, args.concurrency))


if __name__ == "__main__":
    main()
