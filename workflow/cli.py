"""Workflow commands: ``worker``, ``simulate dsp|cns``, ``documents verify|export-keys``,
``outbox list|retry``."""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from pathlib import Path
from typing import Any

from konsil.config import Config


def _config(args: argparse.Namespace) -> Config:
    from konsil.cli import _config as kernel_config

    return kernel_config(args)


def _common(p: argparse.ArgumentParser) -> None:
    from konsil.cli import _add_common

    _add_common(p)


def cmd_worker(args: argparse.Namespace) -> int:
    from konsil.audit.service import AuditSealer
    from konsil.clock import SystemClock
    from konsil.db import Database, check_migrated
    from konsil.logs import setup_logging
    from konsil.runtime import freeze_heap
    from workflow.connectors.worker import run_worker

    config = _config(args)
    setup_logging(config.log_level, config.log_format)

    async def run() -> None:
        db = Database(config.effective_database_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await check_migrated(db)
            freeze_heap()  # started: collections scan only what deliveries create
            # A standalone worker seals the audit rows it writes, as `konsil serve` does.
            sealer = asyncio.create_task(AuditSealer(db).run(stop))
            try:
                await run_worker(config, db, SystemClock(), stop)
            finally:
                stop.set()
                await sealer
        finally:
            await db.dispose()

    asyncio.run(run())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from workflow.simulators.common import SimulatorSettings, load_trust, random_faults
    from workflow.simulators.run import serve

    trusted = None
    if args.trust:
        try:
            trusted = load_trust(Path(args.trust))
        except (OSError, ValueError) as exc:
            print(f"--trust {args.trust}: {exc}", file=sys.stderr)
            return 2
    settings = SimulatorSettings(
        store=Path(args.store),
        latency_ms=args.latency,
        faults=random_faults(args.fail_rate, random.Random()),  # noqa: S311 - fault injection
        trusted_keys=trusted,
        journal=args.journal,
    )
    print(
        f"{args.service} simulator on http://{args.host}:{args.port}/ storing in {args.store}",
        flush=True,
    )
    try:
        serve(args.service, args.host, args.port, settings, processes=args.processes)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


def cmd_documents_verify(args: argparse.Namespace) -> int:
    from konsil.db import Database
    from workflow.documents import verify_document

    config = _config(args)

    async def run() -> Any:
        db = Database(config.effective_database_url)
        try:
            async with db.session() as s:
                return await verify_document(s, args.document_id)
        finally:
            await db.dispose()

    outcome = asyncio.run(run())
    if outcome.ok:
        print(f"document {args.document_id}: {outcome.reason}")
        return 0
    print(f"document {args.document_id}: INVALID: {outcome.reason}", file=sys.stderr)
    return 1


def cmd_documents_export_keys(args: argparse.Namespace) -> int:
    from konsil.db import Database
    from workflow.signing import public_key_pem, public_keys

    config = _config(args)

    async def run() -> list[tuple[str, str, bytes]]:
        db = Database(config.effective_database_url)
        try:
            async with db.session() as s:
                return await public_keys(s)
        finally:
            await db.dispose()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = asyncio.run(run())
    for key_id, organisation_id, public in keys:
        (out / f"{key_id}.pem").write_text(public_key_pem(public))
        print(f"{key_id}.pem  organisation {organisation_id}")
    print(f"{len(keys)} public key(s) in {out}")
    return 0


def _outbox(config: Config) -> Any:
    from konsil.audit.service import AuditLog
    from konsil.clock import SystemClock
    from konsil.db import Database
    from workflow.outbox import Outbox

    db = Database(config.effective_database_url)
    clock = SystemClock()
    return db, Outbox(db, clock, AuditLog(clock), max_attempts=config.workflow.max_attempts)


def cmd_outbox_list(args: argparse.Namespace) -> int:
    config = _config(args)

    async def run() -> None:
        db, outbox = _outbox(config)
        try:
            for v in await outbox.messages(status=args.status, limit=args.limit):
                m = v.message
                print(
                    f"{m.id} {m.target} {m.kind} {m.status} attempts={m.attempts}/{m.max_attempts} "
                    f"ref={m.remote_reference or '-'} error={m.last_error or '-'}"
                )
        finally:
            await db.dispose()

    asyncio.run(run())
    return 0


def cmd_outbox_retry(args: argparse.Namespace) -> int:
    from konsil.audit.service import SYSTEM

    config = _config(args)

    async def run() -> None:
        db, outbox = _outbox(config)
        try:
            await outbox.do_retry(SYSTEM, args.message_id)
        finally:
            await db.dispose()

    asyncio.run(run())
    print(f"message {args.message_id} queued for delivery")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("worker", help="run the outbox delivery worker alone")
    _common(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("simulate", help="run a DSP or CNS simulator")
    p.add_argument("service", choices=["dsp", "cns"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--store", required=True, help="folder for accepted submissions")
    p.add_argument(
        "--journal",
        action="store_true",
        help="append submissions to DIR/submissions.jsonl instead of a folder each",
    )
    p.add_argument("--fail-rate", dest="fail_rate", type=float, default=0.0)
    p.add_argument("--latency", type=int, default=0, help="added latency in milliseconds")
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="serve with N processes sharing the port and the store (cns with --journal)",
    )
    p.add_argument(
        "--trust",
        help="folder of organisations' public keys (konsil documents export-keys): "
        "the CNS verifies every signature",
    )
    p.set_defaults(func=cmd_simulate)

    docs = sub.add_parser("documents", help="clinical documents").add_subparsers(
        dest="documents_command", required=True
    )
    p = docs.add_parser("verify", help="check a document's hash and signature (exit 0 or 1)")
    _common(p)
    p.add_argument("document_id")
    p.set_defaults(func=cmd_documents_verify)
    p = docs.add_parser(
        "export-keys", help="write each organisation's public signing key as <key id>.pem"
    )
    _common(p)
    p.add_argument("--out", required=True, help="folder to write the keys to")
    p.set_defaults(func=cmd_documents_export_keys)

    outbox = sub.add_parser("outbox", help="outgoing messages").add_subparsers(
        dest="outbox_command", required=True
    )
    p = outbox.add_parser("list", help="list outgoing messages")
    _common(p)
    p.add_argument(
        "--status", choices=["pending", "in_flight", "delivered", "rejected", "dead", "cancelled"]
    )
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_outbox_list)
    p = outbox.add_parser("retry", help="send a dead or rejected message again")
    _common(p)
    p.add_argument("message_id")
    p.set_defaults(func=cmd_outbox_retry)
