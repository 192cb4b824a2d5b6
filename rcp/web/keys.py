"""Typed app keys of the RCP feature."""

from __future__ import annotations

from aiohttp import web

from rcp.domain.report import ReportPublisher
from rcp.notices import NoticeDispatcher
from rcp.service import RcpService

RCP = web.AppKey("rcp", RcpService)
# Set before startup to publish through another ReportPublisher (the workflow adapter).
PUBLISHER = web.AppKey("rcp_publisher", ReportPublisher)
NOTICES = web.AppKey("rcp_notices", NoticeDispatcher)
