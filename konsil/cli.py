"""The ``konsil`` command. Errors are one clear line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from konsil.config import Config, load_config
from konsil.errors import ConfigError, KonsilError
from konsil.runtime import freeze_heap

Command = Callable[[argparse.Namespace], int]


def ensure_secret_key(config: Config) -> Config:
    """Use the configured secret key, or one kept in the data dir (created 0600 on first use)."""
    if config.secret_key:
        return config
    path = config.data_path / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return dataclasses.replace(config, secret_key=path.read_text().strip())


def _config(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "database_url", "server_name", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    features = getattr(args, "features", None)
    if features is not None:
        overrides["features"] = tuple(f.strip() for f in features.split(",") if f.strip())
    return load_config(getattr(args, "config", None), overrides=overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (or KONSIL_CONFIG)")
    p.add_argument("--database-url", dest="database_url")
    p.add_argument("--data-dir", dest="data_dir")


# ---------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from konsil.app import create_app
    from konsil.logs import setup_logging

    config = ensure_secret_key(_config(args))
    setup_logging(config.log_level, config.log_format)
    app = create_app(config)
    app.on_startup.append(_freeze_heap)  # after the cleanup contexts (the services) started
    web.run_app(app, host=config.host, port=config.port, print=None, access_log=None)
    return 0


async def _freeze_heap(app: object) -> None:
    """After startup: a full collection then scans only what requests created, instead of
    pausing the event loop for ~100 ms every few seconds under load (the tail of /sync latency)."""
    freeze_heap()


def cmd_db_revision(args: argparse.Namespace) -> int:
    from konsil.db import revision

    url = args.database_url or "sqlite+aiosqlite:///var/revision-scratch.db"
    asyncio.run(revision(url, args.branch, args.message))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from konsil.db import upgrade

    config = _config(args)
    asyncio.run(upgrade(config.effective_database_url))
    print("database is up to date")
    return 0


async def _services(config: Config) -> Any:
    from konsil.audit.service import AuditLog
    from konsil.auth.passwords import PasswordHasher
    from konsil.clock import SystemClock
    from konsil.db import Database, check_migrated
    from konsil.identity.service import IdentityService

    db = Database(config.effective_database_url)
    try:
        await check_migrated(db)
    except BaseException:
        await db.dispose()
        raise
    clock = SystemClock()
    return db, IdentityService(db, clock, PasswordHasher.configured(config.auth), AuditLog(clock))


def cmd_user_create(args: argparse.Namespace) -> int:
    from konsil.audit.service import SYSTEM
    from konsil.identity.service import NewAccount

    config = _config(args)

    async def run() -> str:
        db, identity = await _services(config)
        try:
            account = await identity.do_create_account(
                SYSTEM,
                NewAccount(
                    username=args.username,
                    password=args.password,
                    role=args.role,
                    display_name=args.display_name,
                    specialty=args.specialty,
                    profession=args.profession,
                    email=args.email,
                ),
            )
            return str(account.id)
        finally:
            await db.dispose()

    account_id = asyncio.run(run())
    print(f"created {args.role} @{args.username}:{config.server_name} ({account_id})")
    return 0


def cmd_user_password(args: argparse.Namespace) -> int:
    from konsil.audit.service import SYSTEM

    config = _config(args)
    password = args.password or sys.stdin.readline().rstrip("\n")

    async def run() -> None:
        db, identity = await _services(config)
        try:
            await identity.do_set_password(SYSTEM, args.username, password)
        finally:
            await db.dispose()

    asyncio.run(run())
    print(f"password changed for {args.username}; lock lifted, sessions ended")
    return 0


def cmd_user_unlock(args: argparse.Namespace) -> int:
    from konsil.audit.service import SYSTEM

    config = _config(args)

    async def run() -> None:
        db, identity = await _services(config)
        try:
            await identity.do_unlock(SYSTEM, args.username)
        finally:
            await db.dispose()

    asyncio.run(run())
    print(f"unlocked {args.username}")
    return 0


def cmd_patient_create(args: argparse.Namespace) -> int:
    from konsil.audit.service import SYSTEM
    from konsil.identity.service import NewPatient

    config = _config(args)
    try:
        birth = date.fromisoformat(args.birth_date)
    except ValueError:
        raise ConfigError(f"--birth-date: expected YYYY-MM-DD, got {args.birth_date!r}") from None

    async def run() -> str:
        db, identity = await _services(config)
        try:
            p = await identity.do_create_patient(
                SYSTEM,
                NewPatient(
                    matricule=args.matricule,
                    given_name=args.given_name,
                    family_name=args.family_name,
                    birth_date=birth,
                    sex=args.sex,
                    email=args.email,
                    phone=args.phone,
                ),
            )
            return str(p.id)
        finally:
            await db.dispose()

    print(f"created patient {asyncio.run(run())}")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from konsil.audit.service import verify_chain
    from konsil.db import Database

    config = _config(args)

    async def run() -> Any:
        db = Database(config.effective_database_url)
        try:
            return await verify_chain(db)
        finally:
            await db.dispose()

    result = asyncio.run(run())
    if result.ok:
        pending = (
            f" ({result.unsealed} committed meanwhile, not yet sealed)" if result.unsealed else ""
        )
        print(f"audit chain intact: {result.checked} events verified{pending}")
        return 0
    print(
        f"audit chain BROKEN at event {result.broken_seq}: {result.reason} "
        f"({result.checked} events verified before it)",
        file=sys.stderr,
    )
    return 1


def cmd_demo(args: argparse.Namespace) -> int:
    from konsil.demo import run_demo

    config = ensure_secret_key(_config(args))
    return run_demo(config)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="konsil", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, func, help_ in (
        ("serve", cmd_serve, "run the server"),
        ("demo", cmd_demo, "run the server with simulators and demo data"),
    ):
        p = sub.add_parser(name, help=help_)
        _add_common(p)
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument("--server-name", dest="server_name")
        p.add_argument(
            "--features", help="comma-separated feature packages to serve (default: all)"
        )
        p.set_defaults(func=func)

    db = sub.add_parser("db", help="database administration").add_subparsers(
        dest="db_command", required=True
    )
    p = db.add_parser("upgrade", help="apply all migrations")
    _add_common(p)
    p.set_defaults(func=cmd_db_upgrade)
    p = db.add_parser("revision", help="(developers) autogenerate a package's next migration")
    _add_common(p)
    p.add_argument(
        "--branch", required=True, help="package: konsil, messaging, workflow, rcp, video"
    )
    p.add_argument("-m", "--message", required=True)
    p.set_defaults(func=cmd_db_revision)

    user = sub.add_parser("user", help="accounts").add_subparsers(
        dest="user_command", required=True
    )
    p = user.add_parser("create", help="create an account")
    _add_common(p)
    p.add_argument("--username", required=True)
    p.add_argument("--password", required=True)
    p.add_argument(
        "--role", required=True, choices=["admin", "practitioner", "coordinator", "external"]
    )
    p.add_argument("--display-name", dest="display_name")
    p.add_argument("--specialty")
    p.add_argument("--profession", default="physician")
    p.add_argument("--email")
    p.set_defaults(func=cmd_user_create)
    p = user.add_parser("password", help="set a new password (read from stdin without --password)")
    _add_common(p)
    p.add_argument("--username", required=True)
    p.add_argument("--password")
    p.set_defaults(func=cmd_user_password)
    p = user.add_parser("unlock", help="lift a login lockout")
    _add_common(p)
    p.add_argument("--username", required=True)
    p.set_defaults(func=cmd_user_unlock)

    patient = sub.add_parser("patient", help="patients").add_subparsers(
        dest="patient_command", required=True
    )
    p = patient.add_parser("create", help="register a patient")
    _add_common(p)
    p.add_argument("--matricule", required=True)
    p.add_argument("--given-name", dest="given_name", required=True)
    p.add_argument("--family-name", dest="family_name", required=True)
    p.add_argument("--birth-date", dest="birth_date", required=True, help="YYYY-MM-DD")
    p.add_argument("--sex", default="U", choices=["F", "M", "U"])
    p.add_argument("--email")
    p.add_argument("--phone")
    p.set_defaults(func=cmd_patient_create)

    audit = sub.add_parser("audit", help="audit trail").add_subparsers(
        dest="audit_command", required=True
    )
    p = audit.add_parser("verify", help="walk the hash chain and report the first broken link")
    _add_common(p)
    p.set_defaults(func=cmd_audit_verify)

    for register in extra_commands():
        register(sub)
    return parser


def extra_commands() -> list[Callable[[Any], None]]:
    """Feature packages add their commands here (worker, simulate, documents …)."""
    from messaging.cli import register as messaging_commands
    from workflow.cli import register as workflow_commands

    return [messaging_commands, workflow_commands]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except KonsilError as exc:
        detail = "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
        print(
            f"konsil: error: {exc.message}{' (' + detail + ')' if detail else ''}", file=sys.stderr
        )
        return 2
    except ConfigError as exc:
        print(f"konsil: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"konsil: error: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
