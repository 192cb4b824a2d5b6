"""Typed application keys for the kernel's shared resources (feature packages define their own)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from konsil.audit.service import AuditLog
from konsil.auth.passwords import PasswordHasher
from konsil.auth.service import AuthService, Principal
from konsil.clock import Clock
from konsil.config import Config
from konsil.db import Database
from konsil.i18n import Translator
from konsil.identity.service import IdentityService
from konsil.metrics import Metrics
from konsil.templating import Templates


@dataclass(frozen=True)
class DashboardPanel:
    """A section of the practitioner dashboard, contributed by a feature package."""

    title: str
    link: str
    load: Callable[[Principal], Awaitable[list[tuple[str, str]]]]  # (label, href) rows
    roles: tuple[str, ...] = ("admin", "practitioner", "coordinator")


CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey("clock", Clock)
DB = web.AppKey("db", Database)
AUDIT = web.AppKey("audit", AuditLog)
HASHER = web.AppKey("hasher", PasswordHasher)
AUTH = web.AppKey("auth", AuthService)
IDENTITY = web.AppKey("identity", IdentityService)
TRANSLATOR = web.AppKey("translator", Translator)
JINJA = web.AppKey("jinja", Templates)
METRICS = web.AppKey("metrics", Metrics)
PANELS = web.AppKey("panels", list[DashboardPanel])
# Routes the error middleware lets through without a CSRF token (machine callbacks).
CSRF_EXEMPT = web.AppKey("csrf_exempt", list[str])
