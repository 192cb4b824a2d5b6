"""Media repository: files stored under ``<data_dir>/media`` by SHA-256, metadata in the database.

Who may download: the uploader, and members of a room where the media was shared. A clear-text
event naming the ``mxc://`` URI shares it with that room. Encrypted events hide the URI from the
server, so an encrypted event sent by the uploader shares the uploader's not-yet-shared uploads of
the last few minutes with that room (what a client does when it sends an encrypted attachment).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.clock import Clock
from konsil.db import Database
from konsil.errors import Forbidden, NotFound, TooLarge
from messaging.common import Requester, random_id
from messaging.models import Media, MediaRoom, Membership

MXC_RE = re.compile(r"mxc://([A-Za-z0-9.:\-\[\]]+)/([A-Za-z0-9_\-]+)")
PENDING_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True)
class StoredMedia:
    path: Path
    content_type: str
    filename: str | None
    size: int


class MediaService:
    def __init__(
        self, db: Database, clock: Clock, data_dir: Path, server_name: str, max_bytes: int
    ) -> None:
        self.db = db
        self.clock = clock
        self.root = data_dir / "media"
        self.server_name = server_name
        self.max_bytes = max_bytes

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha[2:4] / sha

    async def do_upload(
        self, req: Requester, data: bytes, content_type: str, filename: str | None
    ) -> str:
        if len(data) > self.max_bytes:
            raise TooLarge("the file is larger than the upload limit", errcode="M_TOO_LARGE")
        sha = hashlib.sha256(data).hexdigest()
        path = self._path(sha)
        if not path.exists():
            await asyncio.to_thread(self._write, path, data)
        media_id = random_id(18)
        async with self.db.transaction() as s:
            s.add(
                Media(
                    media_id=media_id,
                    uploader=req.user_id,
                    content_type=content_type[:255] or "application/octet-stream",
                    filename=filename[:255] if filename else None,
                    size=len(data),
                    sha256=sha,
                    created_at=self.clock.now(),
                )
            )
        return f"mxc://{self.server_name}/{media_id}"

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp-" + random_id(6))
        tmp.write_bytes(data)
        tmp.replace(path)

    async def media_to_link(
        self, s: AsyncSession, req: Requester, room_id: str, raw_content: str, encrypted: bool
    ) -> list[str]:
        """Media an event shares with a room and that is not linked to it yet (see the module
        docstring)."""
        ids = {m.group(2) for m in MXC_RE.finditer(raw_content) if m.group(1) == self.server_name}
        if encrypted:
            since = self.clock.now() - PENDING_WINDOW
            pending = await s.execute(
                select(Media.media_id).where(
                    Media.uploader == req.user_id,
                    Media.created_at >= since,
                    ~exists().where(MediaRoom.media_id == Media.media_id),
                )
            )
            ids.update(pending.scalars())
        out = []
        for media_id in sorted(ids):
            if (
                await s.get(MediaRoom, (media_id, room_id)) is None
                and await s.get(Media, media_id) is not None
            ):
                out.append(media_id)
        return out

    async def fetch(self, req: Requester, server: str, media_id: str) -> StoredMedia:
        if server != self.server_name:
            raise NotFound("remote media is not available", errcode="M_NOT_FOUND")
        async with self.db.session() as s:
            m = await s.get(Media, media_id)
            if m is None:
                raise NotFound("no such media", errcode="M_NOT_FOUND")
            if m.uploader != req.user_id:
                shared = (
                    await s.execute(
                        select(MediaRoom.room_id)
                        .join(Membership, Membership.room_id == MediaRoom.room_id)
                        .where(
                            MediaRoom.media_id == media_id,
                            Membership.user_id == req.user_id,
                            Membership.membership == "join",
                        )
                        .limit(1)
                    )
                ).first()
                if shared is None:
                    raise Forbidden("this media was not shared with you")
        path = self._path(m.sha256)
        if not path.exists():
            raise NotFound("the media file is gone", errcode="M_NOT_FOUND")
        return StoredMedia(path, m.content_type, m.filename, m.size)

    async def purge(self, s: AsyncSession, media_ids: list[str]) -> int:
        """Delete media rows and files no other row refers to; returns how many were removed."""
        removed = 0
        for media_id in media_ids:
            m = await s.get(Media, media_id)
            if m is None:
                continue
            await s.delete(m)
            await s.execute(delete(MediaRoom).where(MediaRoom.media_id == media_id))
            others = (
                await s.execute(
                    select(Media.media_id).where(
                        Media.sha256 == m.sha256, Media.media_id != media_id
                    )
                )
            ).first()
            if others is None:
                self._path(m.sha256).unlink(missing_ok=True)
            removed += 1
        return removed
