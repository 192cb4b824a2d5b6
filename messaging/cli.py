"""``konsil messaging-purge``: apply the rooms' retention periods now (also runs periodically)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from konsil.clock import SystemClock
from konsil.db import Database


def cmd_purge(args: argparse.Namespace) -> int:
    from konsil.cli import _config
    from messaging.media import MediaService
    from messaging.retention import purge_expired
    from messaging.timeline import RecentEvents

    config = _config(args)

    async def run() -> tuple[int, int]:
        db = Database(config.effective_database_url)
        try:
            media = MediaService(
                db,
                SystemClock(),
                Path(config.data_dir),
                config.server_name,
                config.matrix.max_upload_bytes,
            )
            # a running server learns nothing from here: its recent-events cache only holds
            # events younger than any retention period (see messaging.timeline)
            return await purge_expired(db, SystemClock(), media, RecentEvents())
        finally:
            await db.dispose()

    events, media = asyncio.run(run())
    print(f"purged {events} events and {media} media files past their rooms' retention")
    return 0


def register(sub: Any) -> None:
    from konsil.cli import _add_common

    p = sub.add_parser("messaging-purge", help="purge messages and media past retention")
    _add_common(p)
    p.set_defaults(func=cmd_purge)
