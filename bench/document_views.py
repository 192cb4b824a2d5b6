"""The author's view under load: listing (one audit event per document shown), opening, printing.

    python -m bench.document_views [--database-url URL] [--documents 1000] [--requests 100]

Without --database-url a throw-away SQLite file is used (a PostgreSQL URL must name an empty
database). Seeds one author's signed certificates through the real builder and store, then calls
the JSON API in-process (aiohttp test server, bearer token) one request after another and prints
p50/p99 per endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from konsil import appkeys as K
from konsil.app import create_app
from konsil.audit.service import SYSTEM, Actor
from konsil.auth.passwords import FAST_FOR_TESTS, PasswordHasher
from konsil.config import Config
from konsil.db import upgrade
from konsil.identity.matricule import make_matricule
from konsil.identity.service import NewAccount, NewPatient
from workflow.cda import codes
from workflow.cda.sick_leave import Diagnosis, SickLeave, build_sick_leave
from workflow.cda.values import Header, Identifier, Organisation, Patient, Practitioner
from workflow.corrections import document_oid
from workflow.documents import NewDocument
from workflow.models import new_id
from workflow.web.keys import DOCUMENTS

NOW = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


def certificate(matricule: str, birth: date, doc_id: str) -> bytes:
    ident = Identifier(document_oid(doc_id))
    header = Header(
        document_id=ident,
        set_id=ident,
        patient=Patient(matricule, "Anne", "Bench", birth, "F"),
        author=Practitioner(
            Identifier(codes.OID_KONSIL_PRACTITIONER, "bench"), "Gil", "Bench", "general-practice"
        ),
        organisation=Organisation(Identifier(codes.OID_KONSIL_ORGANISATION, "bench"), "Bench"),
    )
    cert = SickLeave(
        "illness", date(2026, 11, 27), date(2026, 12, 3), diagnosis=Diagnosis("J11.1", "Grippe")
    )
    return build_sick_leave(cert, header, now=NOW)


def report(name: str, samples: list[float]) -> None:
    q = statistics.quantiles(samples, n=100)
    print(f"{name:<40} n={len(samples):>4}  p50 {q[49] * 1000:7.1f} ms  p99 {q[98] * 1000:7.1f} ms")


async def run(url: str, documents: int, requests: int, data_dir: str) -> None:
    await upgrade(url)
    config = Config(database_url=url, data_dir=data_dir, secret_key=secrets.token_hex(16))
    app = create_app(config, hasher=PasswordHasher(FAST_FOR_TESTS))
    async with TestClient(TestServer(app)) as client:
        identity = app[K.IDENTITY]
        org = await identity.do_create_organisation(SYSTEM, "Bench", "practice")
        account = await identity.do_create_account(
            SYSTEM,
            NewAccount(
                username="dr.bench",
                password=secrets.token_urlsafe(16),
                role="practitioner",
                display_name="Dr Bench",
            ),
        )
        t0 = time.perf_counter()
        first = ""
        for n in range(documents):
            m = make_matricule("19800101", n % 1000)
            patient = await identity.do_create_patient(
                SYSTEM, NewPatient(m, "Anne", f"Bench{n}", date(1980, 1, 1), "F")
            )
            doc_id = new_id()
            async with app[K.DB].transaction() as s:
                await app[DOCUMENTS].do_create(
                    s,
                    Actor(account.id),
                    NewDocument(
                        "sick-leave",
                        "DT-20002",
                        patient.id,
                        org.id,
                        certificate(m, date(1980, 1, 1), doc_id),
                        author_account_id=account.id,
                        document_id=doc_id,
                    ),
                )
            first = first or doc_id
        print(f"seeded {documents} signed certificates in {time.perf_counter() - t0:.1f} s")
        token = await app[K.AUTH].do_issue_api_token(SYSTEM, "dr.bench", "bench", 1)
        h = {"Authorization": f"Bearer {token}"}
        cases = [
            ("GET /api/v1/documents (200 rows)", "/api/v1/documents", requests),
            (
                "GET /api/v1/documents?kind=prescription",
                "/api/v1/documents?kind=prescription",
                requests,
            ),
            ("GET /api/v1/documents/{id}", f"/api/v1/documents/{first}", requests),
            ("GET /api/v1/documents/{id}/cda", f"/api/v1/documents/{first}/cda", requests),
            (
                "GET …/pdf?copy=employer (WeasyPrint)",
                f"/api/v1/documents/{first}/pdf?copy=employer",
                max(5, requests // 10),
            ),
        ]
        for name, path, n in cases:
            samples = []
            for _ in range(n):
                t = time.perf_counter()
                resp = await client.get(path, headers=h)
                await resp.read()
                assert resp.status == 200, (path, resp.status)
                samples.append(time.perf_counter() - t)
            report(name, samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--database-url")
    ap.add_argument("--documents", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=100)
    args = ap.parse_args()
    if not 1 <= args.documents <= 1000:
        ap.error("--documents: 1 to 1000 (one patient each, matricules 19800101xxx)")
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        print(f"database: {url.split(':')[0]}; load: {os.getloadavg()}")
        asyncio.run(run(url, args.documents, args.requests, tmp))
        print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
