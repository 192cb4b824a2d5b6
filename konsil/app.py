"""The composition root: ``create_app(config)`` wires every component and feature package."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

import templates as templates_pkg
from konsil import appkeys as K
from konsil.audit.service import AuditLog, AuditSealer
from konsil.auth.passwords import PasswordHasher
from konsil.auth.service import AuthService
from konsil.clock import Clock, SystemClock, local
from konsil.config import FEATURES, Config
from konsil.crypto import Sealer
from konsil.db import Database, check_migrated
from konsil.errors import ConfigError
from konsil.i18n import Translator
from konsil.identity.service import IdentityService
from konsil.identity.specialties import BY_CODE
from konsil.logs import silence_aiohttp_access_log
from konsil.metrics import Metrics
from konsil.templating import Templates
from konsil.web import admin_pages, api, auth_pages, ops
from konsil.web.labels import label_for
from konsil.web.middleware import (
    error_middleware,
    metrics_middleware,
    security_middleware,
    session_middleware,
)

if TYPE_CHECKING:
    import jinja2

TEMPLATES_DIR = Path(next(iter(templates_pkg.__path__)))

FeatureSetup = Callable[[web.Application], None]


def _messaging() -> FeatureSetup:
    import messaging.web

    return messaging.web.setup


def _rcp() -> FeatureSetup:
    import rcp.web

    return rcp.web.setup


def _video() -> FeatureSetup:
    import video.web

    return video.web.setup


def _workflow() -> FeatureSetup:
    import workflow.web

    return workflow.web.setup


# Imported only when enabled: a process serving only Matrix never loads the other packages.
_SETUPS: dict[str, Callable[[], FeatureSetup]] = {
    "messaging": _messaging,
    "rcp": _rcp,
    "video": _video,
    "workflow": _workflow,
}
assert list(_SETUPS) == list(FEATURES)


def feature_setups(names: Iterable[str] = FEATURES) -> list[FeatureSetup]:
    """Each enabled feature package's ``web.setup(app)`` (routes, app keys, cleanup contexts,
    panels), in the fixed order of ``konsil.config.FEATURES``."""
    wanted = set(names)
    return [load() for name, load in _SETUPS.items() if name in wanted]


DemoSeed = Callable[[web.Application], Awaitable[bool]]


def demo_seeds(names: Iterable[str] = FEATURES) -> list[DemoSeed]:
    """Each enabled feature's demo data (``konsil demo``), run once the app has started;
    idempotent."""
    seeds: list[DemoSeed] = []
    if "rcp" in names:
        import rcp.web.demo

        seeds.append(rcp.web.demo.seed)
    return seeds


def make_jinja() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR / "pages")),
        autoescape=jinja2.select_autoescape(default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["local"] = lambda dt, fmt="%d/%m/%Y %H:%M": local(dt).strftime(fmt) if dt else ""
    env.filters["specialty"] = lambda code, lang="fr": (
        getattr(BY_CODE[code], lang) if code in BY_CODE else (code or "")
    )
    env.filters["label_for"] = label_for
    return env


def create_app(
    config: Config,
    *,
    clock: Clock | None = None,
    hasher: PasswordHasher | None = None,
    features: list[FeatureSetup] | None = None,
) -> web.Application:
    if not config.secret_key:
        raise ConfigError("secret_key is not set: set KONSIL_SECRET_KEY (konsil serve creates one)")
    app = web.Application(
        middlewares=[security_middleware, metrics_middleware, error_middleware, session_middleware],
        client_max_size=max(config.matrix.max_upload_bytes, 1024**2) + 64 * 1024,
    )
    clock = clock or SystemClock()
    silence_aiohttp_access_log()
    translator = Translator()
    app[K.CONFIG] = config
    app[K.CLOCK] = clock
    app[K.TRANSLATOR] = translator
    app[K.JINJA] = Templates(make_jinja)
    app[K.METRICS] = Metrics()
    app[K.HASHER] = hasher or PasswordHasher.configured(config.auth)
    app[K.AUDIT] = AuditLog(clock)
    app[K.PANELS] = []
    app[K.CSRF_EXEMPT] = []
    app[ops.OPENAPI] = api.base_document()

    async def database_ctx(app: web.Application) -> AsyncIterator[None]:
        db = Database(
            config.effective_database_url, max_connections=config.database_max_connections or None
        )
        try:
            await check_migrated(db)
        except BaseException:
            await db.dispose()
            raise
        app[K.DB] = db
        app[K.AUTH] = AuthService(
            db,
            clock,
            app[K.HASHER],
            app[K.AUDIT],
            config.auth,
            Sealer(config.secret_key, "konsil.totp"),
        )
        app[K.IDENTITY] = IdentityService(db, clock, app[K.HASHER], app[K.AUDIT])
        # Links committed audit rows into the hash chain (konsil/audit/service.py says why
        # this is not done by the writers themselves).
        stop_sealer = asyncio.Event()
        sealer = asyncio.create_task(AuditSealer(db).run(stop_sealer))
        yield
        stop_sealer.set()
        await sealer
        await db.dispose()

    app.cleanup_ctx.append(database_ctx)
    for routes in (ops.routes, auth_pages.routes, admin_pages.routes, api.routes):
        app.router.add_routes(routes)
    app.router.add_static("/static", TEMPLATES_DIR / "static", name="static")
    for setup in feature_setups(config.features) if features is None else features:
        setup(app)
    return app
