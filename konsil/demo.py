"""``konsil demo``: migrate, seed demo data once, start the server (and simulators), print logins.

Demo passwords are generated on first run and kept in ``<data_dir>/demo-logins.txt`` (mode 0600),
so no password lives in the repository.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from datetime import date
from pathlib import Path

from aiohttp import web

from konsil.app import create_app, demo_seeds
from konsil.audit.service import SYSTEM, AuditLog
from konsil.auth.passwords import PasswordHasher
from konsil.clock import SystemClock
from konsil.config import Config
from konsil.db import Database, upgrade
from konsil.identity.matricule import make_matricule
from konsil.identity.service import IdentityService, NewAccount, NewPatient
from konsil.logs import setup_logging

DEMO_ACCOUNTS = (
    # username, role, display name, specialty
    ("admin", "admin", "Administrateur Konsil", None),
    ("coordinatrice", "coordinator", "Claire Coordinatrice", None),
    ("dr.weber", "practitioner", "Anne Weber", "general-practice"),
    ("dr.muller", "practitioner", "Marc Muller", "surgery"),
    ("dr.schmit", "practitioner", "Sophie Schmit", "medical-oncology"),
    ("dr.hoffmann", "practitioner", "Paul Hoffmann", "radiation-oncology"),
    ("dr.klein", "practitioner", "Lea Klein", "pathology"),
)

DEMO_PATIENTS = (
    ("19650312", 1, "Jean", "Reuter", "M"),
    ("19781124", 2, "Marie", "Wagner", "F"),
    ("19900507", 3, "Luc", "Thill", "M"),
)


async def seed(config: Config) -> dict[str, str]:
    """Create the demo organisation, accounts and patients once; return username → password."""
    logins_file = config.data_path / "demo-logins.txt"
    if logins_file.exists():
        data: dict[str, str] = json.loads(logins_file.read_text())
        return data
    db = Database(config.effective_database_url)
    clock = SystemClock()
    identity = IdentityService(db, clock, PasswordHasher.configured(config.auth), AuditLog(clock))
    logins: dict[str, str] = {}
    try:
        org = await identity.do_create_organisation(SYSTEM, "Centre Hospitalier Demo", "hospital")
        for username, role, name, specialty in DEMO_ACCOUNTS:
            password = secrets.token_urlsafe(9)
            await identity.do_create_account(
                SYSTEM,
                NewAccount(
                    username=username,
                    password=password,
                    role=role,
                    display_name=name,
                    specialty=specialty,
                    organisation_id=org.id,
                ),
            )
            logins[username] = password
        for birth, seq, given, family, sex in DEMO_PATIENTS:
            await identity.do_create_patient(
                SYSTEM,
                NewPatient(
                    matricule=make_matricule(birth, seq),
                    given_name=given,
                    family_name=family,
                    birth_date=date(int(birth[:4]), int(birth[4:6]), int(birth[6:])),
                    sex=sex,
                ),
            )
    finally:
        await db.dispose()
    fd = os.open(logins_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(logins, f, indent=1)
    return logins


async def demo_trust(config: Config) -> dict[str, bytes]:
    """The demo CNS's trust list: every organisation's public signing key (the key is created
    now if the organisation has none yet). What an operator does by hand with ``konsil documents
    export-keys`` and ``konsil simulate cns --trust DIR``; an organisation added while the demo
    runs is trusted from the next start."""
    from sqlalchemy import select

    from konsil.identity.models import Organisation
    from workflow.signing import KeyRing, public_keys

    db = Database(config.effective_database_url)
    try:
        ring = KeyRing(config.workflow.signing_key_secret or config.secret_key, SystemClock())
        async with db.transaction() as s:
            for org_id in list((await s.execute(select(Organisation.id))).scalars()):
                await ring.signer_for(s, org_id)
        async with db.session() as s:
            return {key_id: public for key_id, _, public in await public_keys(s)}
    finally:
        await db.dispose()


def demo_sidecars(
    config: Config, trusted: dict[str, bytes] | None = None
) -> list[tuple[str, web.Application, int]]:
    """Other services the demo runs beside Konsil: the DSP and CNS simulators (the CNS checks
    every signature against ``trusted`` when given)."""
    from workflow.simulators import cns, dsp
    from workflow.simulators.common import SimulatorSettings

    store = config.data_path / "simulators"
    cns_settings = SimulatorSettings(store / "cns", trusted_keys=trusted)
    return [
        ("DSP simulator", dsp.create_app(SimulatorSettings(store / "dsp")), config.port + 1),
        ("CNS simulator", cns.create_app(cns_settings), config.port + 2),
    ]


def demo_config(config: Config, dsp_port: int, cns_port: int) -> Config:
    """Point the workflow connectors at the demo's simulators."""
    from dataclasses import replace

    from workflow.simulators.cns import PATH as CNS_PATH
    from workflow.simulators.dsp import ITI41_PATH

    base = f"http://{config.host}"
    return replace(
        config,
        workflow=replace(
            config.workflow,
            dsp_url=config.workflow.dsp_url or f"{base}:{dsp_port}{ITI41_PATH}",
            cns_url=config.workflow.cns_url or f"{base}:{cns_port}{CNS_PATH}",
        ),
    )


async def _main(config: Config) -> None:
    await upgrade(config.effective_database_url)
    logins = await seed(config)
    runners: list[web.AppRunner] = []
    ports: list[int] = []
    for title, side_app, port in demo_sidecars(config, await demo_trust(config)):
        runner = web.AppRunner(side_app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, config.host, port).start()
        except OSError:  # the preferred port is taken: let the system choose one
            await web.TCPSite(runner, config.host, 0).start()
        runners.append(runner)
        port = runner.addresses[0][1]
        ports.append(port)
        print(f"{title}: http://{config.host}:{port}/", flush=True)
    config = demo_config(config, *ports)
    app = create_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    for seed_feature in demo_seeds(config.features):  # e.g. an RCP board with sessions and cases
        await seed_feature(app)
    await web.TCPSite(runner, config.host, config.port).start()
    runners.append(runner)
    print(f"Konsil: http://{config.host}:{config.port}/", flush=True)
    print(
        f"Matrix homeserver: http://{config.host}:{config.port} (server name {config.server_name})"
    )
    print("Demo logins (also in " + str(config.data_path / "demo-logins.txt") + "):")
    for username, password in logins.items():
        print(f"  {username:15s} {password}")
    print("Press Ctrl+C to stop.", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for r in reversed(runners):
            await r.cleanup()


def run_demo(config: Config) -> int:
    setup_logging("WARNING", config.log_format)
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(_main(config))
    except KeyboardInterrupt:
        pass
    return 0
