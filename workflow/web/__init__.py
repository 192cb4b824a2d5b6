"""Workflow in the web app: services, the in-process delivery worker, the outbox trace page."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from konsil import appkeys as K
from konsil.appkeys import DashboardPanel
from konsil.auth.service import Principal
from workflow.connectors.worker import worker_context
from workflow.documents import DocumentStore
from workflow.outbox import DeliveryWorker, Outbox
from workflow.signing import KeyRing
from workflow.web import pages
from workflow.web.keys import DOCUMENTS, KEYS, OUTBOX, WORKER

FRENCH = {
    "Outgoing messages": "Messages sortants",
    "Target": "Destinataire",
    "Status": "Statut",
    "Attempts": "Tentatives",
    "Reference": "Référence",
    "Last error": "Dernière erreur",
    "Retry": "Renvoyer",
    "Created": "Créé",
    "Latency": "Latence",
    "Worker": "Worker",
    "No outgoing messages.": "Aucun message sortant.",
    "All": "Tous",
    "Rejected documents": "Documents refusés",
    "Message queued for another delivery.": "Message remis en file d'envoi.",
}


def secret_of(app: web.Application) -> str:
    config = app[K.CONFIG]
    return config.workflow.signing_key_secret or config.secret_key


def setup(app: web.Application) -> None:
    app[K.TRANSLATOR].add(FRENCH)
    app.router.add_routes(pages.routes)

    async def workflow_ctx(app: web.Application) -> AsyncIterator[None]:
        config, clock, audit = app[K.CONFIG], app[K.CLOCK], app[K.AUDIT]
        app[KEYS] = KeyRing(secret_of(app), clock)
        app[DOCUMENTS] = DocumentStore(clock, audit, app[KEYS])
        app[OUTBOX] = Outbox(app[K.DB], clock, audit, max_attempts=config.workflow.max_attempts)
        wf = config.workflow
        if not (wf.worker_enabled and (wf.cns_url or wf.dsp_url)):
            yield
            return

        def started(worker: DeliveryWorker) -> None:
            app[WORKER] = worker

        async for _ in worker_context(config, app[K.DB], clock, started):
            yield

    app.cleanup_ctx.append(workflow_ctx)

    async def rejected(principal: Principal) -> list[tuple[str, str]]:
        rows = await app[OUTBOX].rejections_for_author(principal.account_id)
        return [
            (f"{m.target.upper()}: {m.last_error or ''}"[:200], "/documents/rejected") for m in rows
        ]

    app[K.PANELS].append(
        DashboardPanel("Rejected documents", "/documents/rejected", rejected, ("practitioner",))
    )
