"""Typed application keys of the workflow package."""

from __future__ import annotations

from aiohttp import web

from workflow.corrections import Corrections
from workflow.documents import DocumentStore
from workflow.outbox import DeliveryWorker, Outbox
from workflow.signing import KeyRing
from workflow.views import DocumentViews

KEYS = web.AppKey("workflow_keys", KeyRing)
DOCUMENTS = web.AppKey("workflow_documents", DocumentStore)
OUTBOX = web.AppKey("workflow_outbox", Outbox)
WORKER = web.AppKey("workflow_worker", DeliveryWorker)
VIEWS = web.AppKey("workflow_views", DocumentViews)
CORRECTIONS = web.AppKey("workflow_corrections", Corrections)
