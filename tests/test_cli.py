from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import update

from konsil.audit.models import AuditEvent
from konsil.cli import main
from konsil.db import Database
from konsil.identity.matricule import make_matricule


def test_user_patient_audit_commands(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--database-url", db_url]
    assert (
        main(
            [
                "user",
                "create",
                *base,
                "--username",
                "dr.cli",
                "--password",
                "cli-password-1",
                "--role",
                "practitioner",
                "--display-name",
                "Dr Cli",
                "--specialty",
                "urology",
            ]
        )
        == 0
    )
    assert "created practitioner @dr.cli:localhost" in capsys.readouterr().out
    # Duplicate and bad specialty: one clear line, non-zero exit
    assert (
        main(
            [
                "user",
                "create",
                *base,
                "--username",
                "dr.cli",
                "--password",
                "cli-password-1",
                "--role",
                "practitioner",
            ]
        )
        == 2
    )
    assert "taken" in capsys.readouterr().err
    assert (
        main(
            [
                "user",
                "create",
                *base,
                "--username",
                "dr.x",
                "--password",
                "cli-password-1",
                "--role",
                "practitioner",
                "--specialty",
                "astrology",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown specialty" in err
    m = make_matricule("19650312", 1)
    assert (
        main(
            [
                "patient",
                "create",
                *base,
                "--matricule",
                m,
                "--given-name",
                "Jean",
                "--family-name",
                "Reuter",
                "--birth-date",
                "1965-03-12",
                "--sex",
                "M",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "patient",
                "create",
                *base,
                "--matricule",
                m[:-1] + "0",
                "--given-name",
                "J",
                "--family-name",
                "R",
                "--birth-date",
                "1965-03-12",
            ]
        )
        == 2
    )
    assert "Verhoeff" in capsys.readouterr().err
    assert main(["user", "password", *base, "--username", "dr.cli", "--password", "short"]) == 2
    assert "at least 10 characters" in capsys.readouterr().err
    assert (
        main(["user", "password", *base, "--username", "dr.cli", "--password", "new-password-22"])
        == 0
    )
    assert main(["user", "unlock", *base, "--username", "nobody"]) == 2
    assert "no account named 'nobody'" in capsys.readouterr().err
    assert main(["user", "unlock", *base, "--username", "dr.cli"]) == 0
    assert main(["audit", "verify", *base]) == 0
    assert "audit chain intact: 4 events" in capsys.readouterr().out

    async def tamper() -> None:
        db = Database(db_url)
        async with db.transaction() as s:
            await s.execute(update(AuditEvent).where(AuditEvent.seq == 1).values(outcome="failure"))
        await db.dispose()

    asyncio.run(tamper())
    assert main(["audit", "verify", *base]) == 1
    assert "BROKEN at event 1" in capsys.readouterr().err


def test_commands_refuse_unmigrated_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    assert (
        main(
            [
                "user",
                "create",
                "--database-url",
                url,
                "--username",
                "a",
                "--password",
                "long-password-1",
                "--role",
                "admin",
            ]
        )
        == 2
    )
    assert "konsil db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade", "--database-url", url]) == 0
