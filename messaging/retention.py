"""Retention: rooms that opt in lose their messages (and the media shared in them) after N days.

A room opts in with the state event ``lu.konsil.retention`` ``{"max_lifetime_days": N}``. State
events stay: they are the room's current state.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from konsil.clock import Clock, ms
from konsil.db import Database
from messaging.common import current_position, loads
from messaging.media import MXC_RE, MediaService
from messaging.models import CurrentState, Event, Media, MediaRoom
from messaging.timeline import RecentEvents

RETENTION_EVENT = "lu.konsil.retention"


async def purge_expired(
    db: Database, clock: Clock, media: MediaService, recent: RecentEvents
) -> tuple[int, int]:
    """Returns (events purged, media purged)."""
    now = clock.now()
    events_purged = media_purged = 0
    async with db.session() as s:
        policies = (
            await s.execute(
                select(Event.room_id, Event.content)
                .join(CurrentState, CurrentState.stream == Event.stream)
                .where(CurrentState.type == RETENTION_EVENT, CurrentState.state_key == "")
            )
        ).all()
    for room_id, raw in policies:
        days = loads(raw).get("max_lifetime_days")
        if not isinstance(days, int) or isinstance(days, bool) or days <= 0:
            continue
        cutoff = now - timedelta(days=days)
        async with db.transaction() as s:
            old = list(
                (
                    await s.execute(
                        select(Event).where(
                            Event.room_id == room_id,
                            Event.origin_server_ts < ms(cutoff),
                            Event.state_key.is_(None),
                        )
                    )
                ).scalars()
            )
            media_ids: set[str] = set()
            for e in old:
                media_ids.update(m.group(2) for m in MXC_RE.finditer(e.content))
            shared = await s.execute(
                select(MediaRoom.media_id)
                .join(Media, Media.media_id == MediaRoom.media_id)
                .where(MediaRoom.room_id == room_id, Media.created_at < cutoff)
            )
            media_ids.update(shared.scalars())
            if old:
                # before the commit: syncs from memory stop serving this room's older events
                recent.invalidate(room_id, await current_position(s))
                await s.execute(delete(Event).where(Event.stream.in_([e.stream for e in old])))
            events_purged += len(old)
            media_purged += await media.purge(s, sorted(media_ids))
    return events_purged, media_purged
