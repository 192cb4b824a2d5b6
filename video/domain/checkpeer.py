"""Pre-call check: an aiortc peer that echoes the browser's camera and microphone back.

aiortc answers non-trickle (the answer carries all candidates). Peers are capped per process and
closed when the connection fails or closes, when the browser says it is done, or after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from konsil.errors import BadRequest, RateLimited

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack, RTCIceServer, RTCPeerConnection
    from aiortc.contrib.media import MediaRelay

log = logging.getLogger("konsil.video.check")


@dataclass
class _Peer:
    pc: RTCPeerConnection
    timer: asyncio.TimerHandle | None = None


class CheckPeers:
    """``on_expire(key)`` is awaited after a peer was closed because its check did not finish
    within ``timeout_seconds`` (to record it and tell the people concerned)."""

    def __init__(
        self,
        max_peers: int,
        timeout_seconds: float,
        on_expire: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.max_peers = max_peers
        self.timeout_seconds = timeout_seconds
        self.on_expire = on_expire
        # aiortc (~50 MB) is imported by the first check, not by every process that serves pages
        self._relay: MediaRelay | None = None
        self._peers: dict[str, _Peer] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._warming: asyncio.Future[Any] | None = None

    def warm_up(self) -> None:
        """Import aiortc in a thread now (a patient opened the entry page), so that the check
        that follows does not wait ~0.6 s for it; once per process."""
        if self._warming is None and "aiortc" not in sys.modules:
            loop = asyncio.get_running_loop()
            self._warming = loop.run_in_executor(None, importlib.import_module, "aiortc")

    @property
    def relay(self) -> MediaRelay:
        if self._relay is None:
            from aiortc.contrib.media import MediaRelay

            self._relay = MediaRelay()
        return self._relay

    @property
    def count(self) -> int:
        return len(self._peers)

    async def answer(
        self, key: str, sdp: str, kind: str, ice_servers: list[RTCIceServer] | None = None
    ) -> tuple[str, str]:
        """Answer the browser's offer with an echo peer; one peer per key (a new offer replaces
        the previous one)."""
        if kind != "offer" or not sdp or len(sdp) > 100_000:
            raise BadRequest("an SDP offer is required")
        await self.close(key)
        if self._warming is not None:
            await asyncio.shield(self._warming)  # not imported twice at once
        if len(self._peers) >= self.max_peers:
            raise RateLimited("the connection test is busy: try again shortly", retry_after_ms=5000)
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers or []))
        peer = _Peer(pc)
        self._peers[key] = peer

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            pc.addTrack(self.relay.subscribe(track))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(key, pc)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:
            await self.close(key, pc)
            raise BadRequest("the SDP offer could not be used") from exc
        # The browser's part starts now: a slow answer (ICE gathering on a busy host) must not
        # use up its time, nor be torn down by the expiry while it is being made.
        if self._peers.get(key) is peer:
            loop = asyncio.get_running_loop()
            peer.timer = loop.call_later(self.timeout_seconds, self._expire, key, pc)
        local = pc.localDescription
        return local.sdp, local.type

    def _expire(self, key: str, pc: RTCPeerConnection) -> None:
        peer = self._peers.get(key)
        if peer is not None and peer.pc is pc:
            task = asyncio.ensure_future(self._expired(key, pc))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _expired(self, key: str, pc: RTCPeerConnection) -> None:
        log.info("pre-call check timed out after %s s", self.timeout_seconds)
        await self.close(key, pc)
        if self.on_expire is not None:
            try:
                await self.on_expire(key)
            except Exception:
                log.exception("reporting an expired pre-call check failed")

    def close_soon(self, key: str) -> None:
        """Close the key's peer in the background (the caller does not wait for aiortc)."""
        peer = self._peers.get(key)
        if peer is not None:
            task = asyncio.ensure_future(self.close(key, peer.pc))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self, key: str, pc: RTCPeerConnection | None = None) -> None:
        peer = self._peers.get(key)
        if peer is None or (pc is not None and peer.pc is not pc):
            return
        del self._peers[key]
        if peer.timer is not None:
            peer.timer.cancel()
        with contextlib.suppress(Exception):
            await peer.pc.close()

    async def closed(self) -> None:
        """Wait for the peers being closed in the background."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def close_all(self) -> None:
        for key in list(self._peers):
            await self.close(key)
        await self.closed()
