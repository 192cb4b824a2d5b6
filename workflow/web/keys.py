"""Typed application keys of the workflow package."""

from __future__ import annotations

from aiohttp import web

from workflow.documents import DocumentStore
from workflow.outbox import DeliveryWorker, Outbox
from workflow.signing import KeyRing

KEYS = web.AppKey("workflow_keys", KeyRing)
DOCUMENTS = web.AppKey("workflow_documents", DocumentStore)
OUTBOX = web.AppKey("workflow_outbox", Outbox)
WORKER = web.AppKey("workflow_worker", DeliveryWorker)
