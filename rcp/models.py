"""RCP tables (prefix ``rcp_``). Times are aware UTC (``UTCDateTime``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from konsil.db import Base, UTCDateTime
from konsil.identity.models import new_id


class Board(Base):
    __tablename__ = "rcp_boards"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    tumour_domain: Mapped[str] = mapped_column(String(32))
    host_organisation_id: Mapped[str | None] = mapped_column(ForeignKey("organisations.id"))
    min_physicians: Mapped[int] = mapped_column(Integer(), default=3)
    min_specialties: Mapped[int] = mapped_column(Integer(), default=3)
    required_specialties: Mapped[list[str]] = mapped_column(JSON())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BoardMember(Base):
    __tablename__ = "rcp_board_members"
    __table_args__ = (UniqueConstraint("board_id", "account_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    board_id: Mapped[str] = mapped_column(ForeignKey("rcp_boards.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    specialty: Mapped[str | None] = mapped_column(String(64))
    is_chair: Mapped[bool] = mapped_column(Boolean(), default=False)
    is_coordinator: Mapped[bool] = mapped_column(Boolean(), default=False)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Schedule(Base):
    """A recurring weekly slot (local wall-clock time) that generates sessions."""

    __tablename__ = "rcp_schedules"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    board_id: Mapped[str] = mapped_column(ForeignKey("rcp_boards.id"), index=True)
    weekday: Mapped[int] = mapped_column(Integer())
    start_local: Mapped[str] = mapped_column(String(5))  # HH:MM Europe/Luxembourg
    duration_minutes: Mapped[int] = mapped_column(Integer())
    capacity: Mapped[int] = mapped_column(Integer())
    deadline_hours: Mapped[int] = mapped_column(Integer())
    place: Mapped[str] = mapped_column(String(200), default="")
    video_link: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Session(Base):
    __tablename__ = "rcp_sessions"
    __table_args__ = (UniqueConstraint("board_id", "starts_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    board_id: Mapped[str] = mapped_column(ForeignKey("rcp_boards.id"), index=True)
    schedule_id: Mapped[str | None] = mapped_column(ForeignKey("rcp_schedules.id"))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime())
    submission_deadline: Mapped[datetime] = mapped_column(UTCDateTime())
    capacity: Mapped[int] = mapped_column(Integer())
    place: Mapped[str] = mapped_column(String(200), default="")
    video_link: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[str] = mapped_column(String(16), default="planned")  # planned | cancelled
    sequence: Mapped[int] = mapped_column(Integer(), default=0)  # iCalendar SEQUENCE
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Attendance(Base):
    __tablename__ = "rcp_attendance"

    session_id: Mapped[str] = mapped_column(ForeignKey("rcp_sessions.id"), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    specialty: Mapped[str | None] = mapped_column(String(64))
    checked_in_at: Mapped[datetime] = mapped_column(UTCDateTime())
    checked_in_by: Mapped[str] = mapped_column(String(32))


class Case(Base):
    """A fiche RCP and its place in the lifecycle (``version`` guards concurrent changes)."""

    __tablename__ = "rcp_cases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    board_id: Mapped[str] = mapped_column(ForeignKey("rcp_boards.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    referrer_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[int] = mapped_column(Integer(), default=1)
    session_id: Mapped[str | None] = mapped_column(ForeignKey("rcp_sessions.id"), index=True)
    agenda_position: Mapped[int] = mapped_column(Integer(), default=0)
    fiche: Mapped[dict[str, Any]] = mapped_column(JSON())
    status_note: Mapped[str] = mapped_column(Text(), default="")
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON())
    signed_by: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    publication_ref: Mapped[str | None] = mapped_column(String(200))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CaseDecision(Base):
    __tablename__ = "rcp_decisions"

    case_id: Mapped[str] = mapped_column(ForeignKey("rcp_cases.id"), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("rcp_sessions.id"))
    decision: Mapped[dict[str, Any]] = mapped_column(JSON())
    quorum: Mapped[dict[str, Any]] = mapped_column(JSON())
    participants: Mapped[list[dict[str, Any]]] = mapped_column(JSON())
    decided_by: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Attachment(Base):
    __tablename__ = "rcp_attachments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("rcp_cases.id"), index=True)
    filename: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer())
    sha256: Mapped[str] = mapped_column(String(64))
    uploaded_by: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BoardRoom(Base):
    """The board's Matrix room, created by the Konsil service account (one per board)."""

    __tablename__ = "rcp_board_rooms"

    board_id: Mapped[str] = mapped_column(ForeignKey("rcp_boards.id"), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Notice(Base):
    """A notification owed to the referring physician (written in the publishing transaction,
    posted to the board's Matrix room afterwards, retried until posted)."""

    __tablename__ = "rcp_notices"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    case_id: Mapped[str] = mapped_column(ForeignKey("rcp_cases.id"), index=True)
    board_id: Mapped[str] = mapped_column(ForeignKey("rcp_boards.id"))
    recipient_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # report-published
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    attempts: Mapped[int] = mapped_column(Integer(), default=0)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    event_id: Mapped[str | None] = mapped_column(String(255))
    last_error: Mapped[str | None] = mapped_column(String(500))
