"""Session calendars: weekly occurrences in Europe/Luxembourg, iCalendar feeds and invitations.

Times are stored in UTC; a recurring schedule is defined in local wall-clock time so a Tuesday
12:30 session stays at 12:30 across daylight-saving changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import icalendar

from konsil.clock import LUXEMBOURG, to_utc
from konsil.errors import ValidationError

PRODID = "-//Konsil//RCP//FR"


@dataclass(frozen=True)
class WeeklyRule:
    weekday: int  # 0 = Monday
    start: time  # local (Europe/Luxembourg)
    duration_minutes: int


def check_weekly(weekday: int, start: str, duration_minutes: int) -> WeeklyRule:
    errors: dict[str, str] = {}
    if not 0 <= weekday <= 6:
        errors["weekday"] = "0 (Monday) to 6 (Sunday)"
    try:
        t = time.fromisoformat(start)
    except ValueError:
        errors["start"] = "a time such as 12:30"
        t = time(0, 0)
    if not 15 <= duration_minutes <= 600:
        errors["duration_minutes"] = "between 15 and 600 minutes"
    if errors:
        raise ValidationError("the schedule is not valid", fields=errors)
    return WeeklyRule(weekday, t.replace(second=0, microsecond=0), duration_minutes)


def local_to_utc(day: date, at: time) -> datetime:
    return datetime.combine(day, at, tzinfo=LUXEMBOURG).astimezone(UTC)


def occurrences(rule: WeeklyRule, after: datetime, weeks: int) -> list[tuple[datetime, datetime]]:
    """(start, end) in UTC of the next ``weeks`` weekly occurrences strictly after ``after``."""
    local_after = to_utc(after).astimezone(LUXEMBOURG)
    day = local_after.date() + timedelta(days=(rule.weekday - local_after.weekday()) % 7)
    out: list[tuple[datetime, datetime]] = []
    while len(out) < weeks:
        start = local_to_utc(day, rule.start)
        if start > to_utc(after):
            out.append((start, start + timedelta(minutes=rule.duration_minutes)))
        day += timedelta(days=7)
    return out


@dataclass(frozen=True)
class CalendarSession:
    uid: str
    board_name: str
    start: datetime
    end: datetime
    place: str
    video_link: str
    cancelled: bool
    sequence: int
    url: str
    attendees: Sequence[tuple[str, str]] = ()  # (name, e-mail)
    organizer: tuple[str, str] | None = None


def _event(s: CalendarSession, stamp: datetime) -> icalendar.Event:
    ev = icalendar.Event()
    ev.add("uid", s.uid)
    ev.add("dtstamp", to_utc(stamp))
    ev.add("dtstart", to_utc(s.start).astimezone(LUXEMBOURG))
    ev.add("dtend", to_utc(s.end).astimezone(LUXEMBOURG))
    ev.add("summary", f"RCP {s.board_name}")
    ev.add("sequence", s.sequence)
    ev.add("status", "CANCELLED" if s.cancelled else "CONFIRMED")
    if s.place:
        ev.add("location", s.place)
    description = [s.url]
    if s.video_link:
        description.append(s.video_link)
        ev.add("conference", s.video_link, parameters={"VALUE": "URI"})
    ev.add("description", "\n".join(description))
    ev.add("url", s.url)
    if s.organizer:
        org = icalendar.vCalAddress(f"mailto:{s.organizer[1]}")
        org.params["cn"] = icalendar.vText(s.organizer[0])
        ev.add("organizer", org)
    for name, email in s.attendees:
        att = icalendar.vCalAddress(f"mailto:{email}")
        att.params["cn"] = icalendar.vText(name)
        att.params["role"] = icalendar.vText("REQ-PARTICIPANT")
        ev.add("attendee", att, encode=False)
    return ev


def feed(name: str, sessions: Iterable[CalendarSession], stamp: datetime) -> bytes:
    """A subscribable feed (no METHOD): cancelled sessions stay in it with STATUS:CANCELLED."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("x-wr-calname", name)
    cal.add("x-wr-timezone", "Europe/Luxembourg")
    for s in sessions:
        cal.add_component(_event(s, stamp))
    cal.add_missing_timezones()
    return bytes(cal.to_ical())


def invitation(s: CalendarSession, stamp: datetime) -> bytes:
    """An iTIP message: METHOD:REQUEST, or METHOD:CANCEL once the session is cancelled."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "CANCEL" if s.cancelled else "REQUEST")
    cal.add_component(_event(s, stamp))
    cal.add_missing_timezones()
    return bytes(cal.to_ical())
