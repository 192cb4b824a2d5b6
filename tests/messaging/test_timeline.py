"""The recent-events cache answers only what it knows completely, else None (ask the database)."""

from __future__ import annotations

from messaging.models import Event
from messaging.timeline import Cached, RecentEvents

NOW = 1_700_000_000_000


def ev(stream: int, room: str = "!r:x", ts: int = NOW) -> Event:
    return Event(
        stream=stream,
        event_id=f"$e{stream}",
        room_id=room,
        sender="@a:x",
        type="m.room.message",
        state_key=None,
        content='{"body": "hi"}',
        origin_server_ts=ts,
        txn_device=None,
        txn_id=None,
    )


def streams(got: list[Cached] | None) -> list[int] | None:
    return None if got is None else [c.ev.stream for c in got]


def test_published_batches_are_served_above_the_floor() -> None:
    cache = RecentEvents(start=10)
    assert streams(cache.since("!r:x", 10, 10, NOW)) == []
    assert cache.since("!r:x", 9, 10, NOW) is None  # before the process started
    cache.begin(["!r:x"], 11)
    # in flight: a sync up to below the batch is answered, one reaching it is not
    assert streams(cache.since("!r:x", 10, 10, NOW)) == []
    assert cache.since("!r:x", 10, 11, NOW) is None
    cache.publish(["!r:x"], 11, [ev(11), ev(12)])
    assert streams(cache.since("!r:x", 10, 12, NOW)) == [11, 12]
    assert streams(cache.since("!r:x", 11, 12, NOW)) == [12]
    assert streams(cache.since("!r:x", 10, 11, NOW)) == [11]  # never past upto


def test_other_writes_and_failures_raise_the_floor() -> None:
    cache = RecentEvents(start=0)
    cache.begin(["!r:x"], 1)
    cache.publish(["!r:x"], 1, [ev(1), ev(2)])
    cache.invalidate("!r:x", 3)  # e.g. a redaction at 3
    assert cache.since("!r:x", 0, 3, NOW) is None
    assert streams(cache.since("!r:x", 3, 3, NOW)) == []
    # a batch that committed before the invalidation but published after it adds nothing
    cache.begin(["!r:x"], 2)
    cache.publish(["!r:x"], 2, [ev(2)])
    assert streams(cache.since("!r:x", 3, 5, NOW)) == []
    cache.begin(["!r:x"], 4)
    cache.abort(["!r:x"], 4, 5)
    assert cache.since("!r:x", 3, 5, NOW) is None
    assert streams(cache.since("!r:x", 5, 5, NOW)) == []


def test_old_events_leave_the_cache() -> None:
    cache = RecentEvents(start=0)
    cache.begin(["!r:x"], 1)
    cache.publish(["!r:x"], 1, [ev(1, ts=NOW), ev(2, ts=NOW + 10)])
    later = NOW + RecentEvents.MAX_AGE_MS + 5
    assert cache.since("!r:x", 0, 2, later) is None
    assert streams(cache.since("!r:x", 1, 2, later)) == [2]
