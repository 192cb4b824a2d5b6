"""RCP web layer: pages under /rcp, the JSON API under /api/v1/rcp, the dashboard panel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from konsil import appkeys as K
from konsil.auth.service import Principal
from konsil.clock import local
from konsil.errors import Conflict
from konsil.web import ops
from messaging.rooms import RoomService
from messaging.web import HS
from rcp.domain.lifecycle import CaseState
from rcp.domain.report import ReportPublisher
from rcp.matrix import MatrixBoardRooms
from rcp.notices import NoticeDispatcher
from rcp.publishing import WorkflowReportPublisher
from rcp.service import RcpService
from rcp.web import api, pages
from rcp.web.i18n import FR, PAGES_EN, REFUSALS_FR
from rcp.web.keys import NOTICES, PUBLISHER, RCP
from rcp.web.live import LIVE, setup_live
from workflow.documents import DocumentStore
from workflow.outbox import Outbox
from workflow.web.keys import DOCUMENTS, OUTBOX, WORKER

log = logging.getLogger(__name__)
RETRY_EVERY_S = 60.0
FIRST_ROUND_AFTER_S = 5.0
# Set at shutdown (before the cleanup contexts close the database) to end the retry loop.
NOTICE_LOOP_STOP = web.AppKey("rcp_notice_loop_stop", asyncio.Event)


def workflow_publisher(app: web.Application) -> ReportPublisher:
    def documents() -> DocumentStore:
        if DOCUMENTS not in app:
            raise Conflict("publishing RCP reports needs the workflow feature")
        return app[DOCUMENTS]

    def outbox() -> Outbox:
        if OUTBOX not in app:
            raise Conflict("publishing RCP reports needs the workflow feature")
        return app[OUTBOX]

    return WorkflowReportPublisher(app[K.CLOCK], documents, outbox)


def setup(app: web.Application) -> None:
    """Register the RCP feature. A ``ReportPublisher`` set in ``app[PUBLISHER]`` before the app
    starts is used for publication; otherwise signed reports are stored as CDA documents and
    queued for the DSP through the workflow feature (``WorkflowReportPublisher``)."""
    app[K.TRANSLATOR].add(FR)
    app[K.TRANSLATOR].add(REFUSALS_FR)
    app[K.TRANSLATOR].add_english(PAGES_EN)
    app.router.add_routes(pages.routes)
    app.router.add_routes(api.routes)
    setup_live(app)
    app[ops.OPENAPI]["paths"].update(api.openapi_paths())
    app[ops.OPENAPI]["components"]["schemas"].update(api.openapi_schemas())

    async def rcp_ctx(app: web.Application) -> AsyncIterator[None]:
        publisher: ReportPublisher = app[PUBLISHER] if PUBLISHER in app else workflow_publisher(app)
        app[RCP] = RcpService(
            app[K.DB],
            app[K.CLOCK],
            app[K.AUDIT],
            app[K.AUTH],
            publisher,
            app[K.CONFIG].data_path,
        )

        async def wake_worker(_case_id: str, _ref: str) -> None:
            worker = app.get(WORKER)
            if worker is not None:
                worker.wake()

        app[RCP].after_publish.append(wake_worker)

        def room_service() -> RoomService | None:
            return app[HS].rooms if HS in app else None

        rooms = MatrixBoardRooms(app[K.DB], app[K.CLOCK], room_service)
        notices = app[NOTICES] = NoticeDispatcher(
            app[K.DB], app[K.CLOCK], rooms, app[K.CONFIG].base_url, app[K.AUDIT]
        )

        async def notify(_case_id: str, _ref: str) -> None:
            await notices.deliver_due()

        app[RCP].after_publish.append(notify)
        app[RCP].after_board_change.append(rooms.sync)
        app[RCP].after_member_removed.append(rooms.remove)
        app[RCP].after_session_change.append(app[LIVE].changed)

        stop = app[NOTICE_LOOP_STOP] = asyncio.Event()

        async def retry_loop() -> None:
            """Notices not posted at once (messaging down, a crash before posting) are retried
            here: shortly after startup, then every RETRY_EVERY_S seconds, until shutdown."""
            delay = FIRST_ROUND_AFTER_S
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    break
                try:
                    await notices.deliver_due()
                except Exception:
                    log.exception("RCP notices: delivery round failed")
                delay = RETRY_EVERY_S

        task = asyncio.create_task(retry_loop())
        yield
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(rcp_ctx)

    async def stop_notices(app: web.Application) -> None:
        if NOTICE_LOOP_STOP in app:
            app[NOTICE_LOOP_STOP].set()

    app.on_shutdown.append(stop_notices)

    async def my_cases(p: Principal) -> list[tuple[str, str]]:
        rows = await app[RCP].my_cases(p)
        out = []
        for case, patient, board in rows[:8]:
            label = f"{patient.family_name} · {board.name} · {CaseState(case.state).value}"
            out.append((label, f"/rcp/cases/{case.id}"))
        return out

    async def published(p: Principal) -> list[tuple[str, str]]:
        rows = await app[RCP].published_for(p)
        return [
            (
                f"{local(n.created_at).strftime('%d/%m/%Y')} · {patient.family_name} · {board.name}",
                f"/rcp/cases/{n.case_id}",
            )
            for n, patient, board in rows
        ]

    async def upcoming(p: Principal) -> list[tuple[str, str]]:
        rows = await app[RCP].upcoming_for(p)
        return [
            (f"{local(x.starts_at).strftime('%d/%m/%Y %H:%M')} · {b.name}", f"/rcp/sessions/{x.id}")
            for x, b in rows
        ]

    async def unposted(_p: Principal) -> list[tuple[str, str]]:
        if NOTICES not in app:
            return []
        rows = [r for r in await app[NOTICES].pending() if r.given_up]
        return [
            (
                f"{local(r.notice.created_at).strftime('%d/%m/%Y')} · {r.board_name} · "
                f"{r.recipient_name} · {r.notice.last_error or ''}"[:200],
                f"/admin/rcp/notices#n-{r.notice.id}",
            )
            for r in rows[:8]
        ]

    app[K.PANELS].append(
        K.DashboardPanel("RCP: my cases", "/rcp/my", my_cases, roles=("practitioner",))
    )
    app[K.PANELS].append(
        K.DashboardPanel(
            "RCP: notices not posted", "/admin/rcp/notices", unposted, roles=("admin",)
        )
    )
    app[K.PANELS].append(
        K.DashboardPanel(
            "RCP: reports published", "/rcp/my", published, roles=("practitioner", "coordinator")
        )
    )
    app[K.PANELS].append(
        K.DashboardPanel(
            "RCP: my upcoming sessions", "/rcp", upcoming, roles=("practitioner", "coordinator")
        )
    )
