"""RCP domain service: ``check_*`` validates and authorises, ``do_*`` changes; reads of a case
(and of patient data on agendas and lists) are audited with the patient's id.

Case transitions go through one function (``_transition``) that consults the lifecycle table and
applies the change with a conditional UPDATE on ``version``: of two concurrent decisions on the
same case exactly one changes the row, the other gets ``Conflict``; nothing is half-applied
because each action runs in a single transaction.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import Actor, AuditEntry, AuditLog
from konsil.auth.service import AuthService, Principal
from konsil.clock import LUXEMBOURG, Clock, to_utc
from konsil.db import Database
from konsil.errors import (
    Conflict,
    Forbidden,
    KonsilError,
    NotFound,
    Reason,
    TooLarge,
    ValidationError,
)
from konsil.identity.matricule import check_matricule
from konsil.identity.models import Account, Organisation, Patient, Practitioner
from konsil.identity.specialties import BY_CODE
from rcp.domain import calendar as cal
from rcp.domain.fiche import Fiche, check_fiche, fiche_from_json, fiche_refused, one_of
from rcp.domain.lifecycle import CaseState, next_state
from rcp.domain.quorum import Attendee, QuorumRule, QuorumStatus, check_rule, evaluate, joined
from rcp.domain.report import (
    Decision,
    ProposalItem,
    RcpReportData,
    ReportDiagnosis,
    ReportPatient,
    ReportPerson,
    ReportPublisher,
    ReportQuorum,
    ReportTnm,
    check_decision,
)
from rcp.models import (
    Attachment,
    Attendance,
    Board,
    BoardMember,
    Case,
    CaseDecision,
    Notice,
    Schedule,
    Session,
)
from rcp.notices import REPORT_PUBLISHED, add_notice
from rcp.publishing import document_id_of, fiche_problems
from workflow.models import OutboxMessage

TUMOUR_DOMAINS = (
    "breast",
    "digestive",
    "thoracic",
    "urology",
    "gynaecology",
    "ent",
    "haematology",
    "neuro",
    "skin",
    "sarcoma",
    "endocrine",
    "paediatric",
    "other",
)
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
# content type -> magic bytes check
ATTACHMENT_TYPES: dict[str, tuple[bytes, int]] = {
    "application/pdf": (b"%PDF-", 0),
    "image/png": (b"\x89PNG\r\n\x1a\n", 0),
    "image/jpeg": (b"\xff\xd8\xff", 0),
    "application/dicom": (b"DICM", 128),
    "text/plain": (b"", 0),
}
SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberView:
    account_id: str
    username: str
    name: str
    email: str | None
    specialty: str | None
    is_chair: bool
    is_coordinator: bool


@dataclass(frozen=True)
class BoardView:
    board: Board
    host_organisation: str | None
    members: tuple[MemberView, ...]

    @property
    def rule(self) -> QuorumRule:
        return rule_of(self.board)

    def member(self, account_id: str) -> MemberView | None:
        return next((m for m in self.members if m.account_id == account_id), None)


@dataclass(frozen=True)
class Delivery:
    """The published report's clinical document and its outbox row (DSP delivery)."""

    document_id: str
    status: str  # outbox status: pending, in_flight, delivered, rejected, dead
    attempts: int
    last_error: str | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class CaseView:
    case: Case
    board: Board
    patient: Patient
    referrer_name: str
    session: Session | None
    decision: CaseDecision | None
    attachments: tuple[Attachment, ...]
    viewer: MemberView | None  # the caller's board membership, if any
    is_referrer: bool
    delivery: Delivery | None = None  # the published report's way to the DSP

    @property
    def state(self) -> CaseState:
        return CaseState(self.case.state)

    @property
    def fiche(self) -> Fiche:
        return fiche_from_json(self.case.fiche)

    @property
    def report(self) -> RcpReportData | None:
        return RcpReportData.from_json(self.case.report) if self.case.report else None

    @property
    def can_triage(self) -> bool:
        return self.viewer is not None and (self.viewer.is_coordinator or self.viewer.is_chair)

    @property
    def can_sign(self) -> bool:
        return self.viewer is not None and self.viewer.is_chair


@dataclass(frozen=True)
class AgendaItem:
    case: Case
    patient: Patient


@dataclass(frozen=True)
class SessionView:
    session: Session
    board: BoardView
    agenda: tuple[AgendaItem, ...]
    attendance: frozenset[str]
    quorum: QuorumStatus
    viewer: MemberView | None = None
    waiting: tuple[AgendaItem, ...] = field(default=())  # submitted/postponed cases to schedule


def rule_of(board: Board) -> QuorumRule:
    return QuorumRule(
        board.min_physicians, board.min_specialties, tuple(board.required_specialties or ())
    )


P = ParamSpec("P")
R = TypeVar("R")
# The sessions whose agenda or attendance the current service call changed (see notifies_sessions)
_TOUCHED: ContextVar[set[str] | None] = ContextVar("rcp_touched_sessions", default=None)


def touch(*session_ids: str | None) -> None:
    touched = _TOUCHED.get()
    if touched is not None:
        touched.update(x for x in session_ids if x)


def notifies_sessions(
    fn: Callable[Concatenate[RcpService, P], Awaitable[R]],
) -> Callable[Concatenate[RcpService, P], Awaitable[R]]:
    """After the call succeeded (its transaction committed), run ``after_session_change`` for
    each session it touched (e.g. push the live page's quorum and agenda)."""

    @functools.wraps(fn)
    async def wrapper(self: RcpService, /, *args: P.args, **kwargs: P.kwargs) -> R:
        token = _TOUCHED.set(set())
        try:
            result = await fn(self, *args, **kwargs)
            touched = _TOUCHED.get() or set()
        finally:
            _TOUCHED.reset(token)
        await self._sessions_changed(touched)
        return result

    return wrapper


def check_submittable(data: Mapping[str, Any], *, submit: bool) -> Fiche:
    """``check_fiche``; for a submission also what the report CDA could not carry (one error
    listing every field)."""
    fiche = check_fiche(data, for_submission=submit)
    if submit and (problems := fiche_problems(fiche)):
        raise fiche_refused(problems)
    return fiche


def actor_of(p: Principal, ip: str | None = None) -> Actor:
    return Actor(p.account_id, ip)


class RcpService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        audit: AuditLog,
        auth: AuthService,
        publisher: ReportPublisher,
        data_dir: Path,
    ) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit
        self.auth = auth
        self.publisher = publisher
        self.files = data_dir / "rcp" / "attachments"
        # Called after the publishing transaction commits, with the case id and the reference
        # (e.g. wake the delivery worker). A failing hook is logged; the publication stands.
        self.after_publish: list[Callable[[str, str], Awaitable[None]]] = []
        # Called with the board id after its members or its submitted cases changed (e.g. invite
        # people to the board's room). Best effort: a failing hook is logged.
        self.after_board_change: list[Callable[[str], Awaitable[None]]] = []
        # Called with (board id, username) after a member was removed (takes them out of the
        # board's Matrix room). Best effort: a failing hook is logged.
        self.after_member_removed: list[Callable[[str, str], Awaitable[None]]] = []
        # Called with a session id after its agenda or attendance changed (best effort).
        self.after_session_change: list[Callable[[str], Awaitable[None]]] = []

    async def _sessions_changed(self, session_ids: Iterable[str]) -> None:
        for sid in sorted(session_ids):
            for hook in self.after_session_change:
                try:
                    await hook(sid)
                except Exception:
                    log.exception("session-change hook failed for an RCP session")

    async def _board_changed(self, board_id: str) -> None:
        for hook in self.after_board_change:
            try:
                await hook(board_id)
            except Exception:
                log.exception("board-change hook failed for an RCP board")

    # ------------------------------------------------------------------ boards

    async def do_create_board(
        self,
        p: Principal,
        name: str,
        tumour_domain: str,
        host_organisation_id: str | None = None,
        *,
        ip: str | None = None,
    ) -> Board:
        if not p.has_role("coordinator", "admin"):
            raise Forbidden("only coordinators and administrators create boards")
        errors: dict[str, str] = {}
        name = " ".join(name.split())
        if not name or len(name) > 200:
            errors["name"] = "required, at most 200 characters"
        if tumour_domain not in TUMOUR_DOMAINS:
            errors["tumour_domain"] = one_of(TUMOUR_DOMAINS)
        if errors:
            raise ValidationError("the board is not valid", fields=errors)
        try:
            async with self.db.transaction() as s:
                if host_organisation_id and await s.get(Organisation, host_organisation_id) is None:
                    raise ValidationError(
                        "unknown organisation",
                        fields={"host_organisation_id": "unknown organisation"},
                    )
                rule = QuorumRule()
                board = Board(
                    name=name,
                    tumour_domain=tumour_domain,
                    host_organisation_id=host_organisation_id or None,
                    min_physicians=rule.min_physicians,
                    min_specialties=rule.min_specialties,
                    required_specialties=list(rule.required),
                    created_at=self.clock.now(),
                )
                s.add(board)
                await s.flush()
                if p.role == "coordinator":
                    s.add(
                        BoardMember(
                            board_id=board.id,
                            account_id=p.account_id,
                            specialty=None,
                            is_chair=False,
                            is_coordinator=True,
                            added_at=self.clock.now(),
                        )
                    )
                await self.audit.record(
                    s, actor_of(p, ip), "rcp.board.create", resource=f"rcp/board/{board.id}"
                )
        except IntegrityError:
            raise Conflict(
                Reason("a board named {name!r} exists already", name=name),
                fields={"name": "already exists"},
            ) from None
        return board

    async def boards(self) -> Sequence[Board]:
        async with self.db.session() as s:
            return (await s.execute(select(Board).order_by(Board.name))).scalars().all()

    async def _board_view(self, s: AsyncSession, board_id: str) -> BoardView:
        board = await s.get(Board, board_id)
        if board is None:
            raise NotFound("no such board")
        rows = await s.execute(
            select(BoardMember, Account, Practitioner)
            .join(Account, Account.id == BoardMember.account_id)
            .outerjoin(Practitioner, Practitioner.id == Account.practitioner_id)
            .where(BoardMember.board_id == board_id)
            .order_by(Account.display_name)
        )
        members = tuple(
            MemberView(
                a.id,
                a.username,
                a.display_name,
                pr.email if pr else None,
                m.specialty,
                m.is_chair,
                m.is_coordinator,
            )
            for m, a, pr in rows.all()
        )
        org = (
            await s.get(Organisation, board.host_organisation_id)
            if board.host_organisation_id
            else None
        )
        return BoardView(board, org.name if org else None, members)

    async def board(self, board_id: str) -> BoardView:
        async with self.db.session() as s:
            return await self._board_view(s, board_id)

    def _require_manager(self, p: Principal, bv: BoardView) -> None:
        m = bv.member(p.account_id)
        if not (p.role == "admin" or (m is not None and m.is_coordinator)):
            raise Forbidden("only the board's coordinators manage it")

    async def do_add_member(
        self,
        p: Principal,
        board_id: str,
        username: str,
        *,
        specialty: str | None = None,
        chair: bool = False,
        coordinator: bool = False,
        ip: str | None = None,
    ) -> MemberView:
        try:
            member = await self._add_member(
                p, board_id, username, specialty, chair, coordinator, ip
            )
        except IntegrityError:
            raise Conflict("the membership was changed meanwhile: retry") from None
        await self._board_changed(board_id)
        return member

    async def _add_member(
        self,
        p: Principal,
        board_id: str,
        username: str,
        specialty: str | None,
        chair: bool,
        coordinator: bool,
        ip: str | None,
    ) -> MemberView:
        async with self.db.transaction() as s:
            bv = await self._board_view(s, board_id)
            self._require_manager(p, bv)
            account = (
                await s.execute(select(Account).where(Account.username == username.strip()))
            ).scalar_one_or_none()
            if account is None or not account.is_active:
                raise ValidationError(
                    "unknown account", fields={"username": "no such active account"}
                )
            pr = (
                await s.get(Practitioner, account.practitioner_id)
                if account.practitioner_id
                else None
            )
            spec = specialty or (pr.specialty if pr else None)
            if spec is not None and spec not in BY_CODE:
                raise ValidationError(
                    "unknown specialty", fields={"specialty": "unknown specialty code"}
                )
            if chair and (pr is None or pr.profession != "physician"):
                raise ValidationError("a chair is a physician", fields={"chair": "not a physician"})
            existing = (
                await s.execute(
                    select(BoardMember).where(
                        BoardMember.board_id == board_id, BoardMember.account_id == account.id
                    )
                )
            ).scalar_one_or_none()
            if existing is None:
                existing = BoardMember(
                    board_id=board_id, account_id=account.id, added_at=self.clock.now()
                )
                s.add(existing)
            existing.specialty = spec
            existing.is_chair = chair
            existing.is_coordinator = coordinator
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.board.member",
                resource=f"rcp/board/{board_id}",
                details={"account": account.id, "chair": chair, "coordinator": coordinator},
            )
            return MemberView(
                account.id,
                account.username,
                account.display_name,
                pr.email if pr else None,
                spec,
                chair,
                coordinator,
            )

    async def do_remove_member(
        self, p: Principal, board_id: str, account_id: str, *, ip: str | None = None
    ) -> None:
        """Take someone off the board (coordinators, admins). The board keeps at least one
        coordinator. A removed member no longer counts towards any session's quorum, no longer
        sees the board's cases and is taken out of the board's Matrix room (unless they are
        still the referrer of one of its cases). Decisions and reports already made keep naming
        them."""
        async with self.db.transaction() as s:
            bv = await self._board_view(s, board_id)
            self._require_manager(p, bv)
            m = bv.member(account_id)
            if m is None:
                raise NotFound("this account is not a member of the board")
            if m.is_coordinator and sum(1 for x in bv.members if x.is_coordinator) == 1:
                raise Conflict(
                    "the board's last coordinator cannot be removed: name another coordinator first"
                )
            await s.execute(
                delete(BoardMember).where(
                    BoardMember.board_id == board_id, BoardMember.account_id == account_id
                )
            )
            touched = set(
                (
                    await s.execute(
                        select(Attendance.session_id)
                        .join(Session, Session.id == Attendance.session_id)
                        .where(Session.board_id == board_id, Attendance.account_id == account_id)
                    )
                ).scalars()
            )
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.board.member.remove",
                resource=f"rcp/board/{board_id}",
                details={"account": account_id},
            )
        await self._board_changed(board_id)
        await self._sessions_changed(touched)  # live quorum pages recount
        for hook in self.after_member_removed:
            try:
                await hook(board_id, m.username)
            except Exception:
                log.exception("member-removed hook failed for an RCP board")

    async def do_set_quorum(
        self,
        p: Principal,
        board_id: str,
        min_physicians: int,
        min_specialties: int,
        required: Sequence[str],
        *,
        ip: str | None = None,
    ) -> QuorumRule:
        rule = check_rule(min_physicians, min_specialties, required)
        async with self.db.transaction() as s:
            bv = await self._board_view(s, board_id)
            self._require_manager(p, bv)
            b = bv.board
            b.min_physicians, b.min_specialties = rule.min_physicians, rule.min_specialties
            b.required_specialties = list(rule.required)
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.board.quorum",
                resource=f"rcp/board/{board_id}",
                details=rule.to_json(),
            )
        return rule

    # ------------------------------------------------------------------ sessions

    def _check_session_fields(
        self, capacity: int, deadline_hours: int, place: str, video_link: str
    ) -> None:
        errors: dict[str, str] = {}
        if not 1 <= capacity <= 200:
            errors["capacity"] = "between 1 and 200 cases"
        if not 0 <= deadline_hours <= 24 * 14:
            errors["deadline_hours"] = "between 0 and 336 hours before the session"
        if not place.strip() and not video_link.strip():
            errors["place"] = "give a place, a video link, or both"
        if video_link and not video_link.startswith(("https://", "http://")):
            errors["video_link"] = "an http(s) link"
        if len(place) > 200:
            errors["place"] = "at most 200 characters"
        if errors:
            raise ValidationError("the session is not valid", fields=errors)

    async def do_add_schedule(
        self,
        p: Principal,
        board_id: str,
        *,
        weekday: int,
        start: str,
        duration_minutes: int,
        capacity: int,
        deadline_hours: int,
        place: str = "",
        video_link: str = "",
        weeks: int = 8,
        ip: str | None = None,
    ) -> list[Session]:
        """A weekly slot, and its sessions for the next ``weeks`` weeks."""
        rule = cal.check_weekly(weekday, start, duration_minutes)
        self._check_session_fields(capacity, deadline_hours, place, video_link)
        if not 1 <= weeks <= 52:
            raise ValidationError("too many weeks", fields={"weeks": "between 1 and 52"})
        try:
            return await self._add_schedule(
                p, board_id, rule, capacity, deadline_hours, place, video_link, weeks, ip
            )
        except IntegrityError:
            raise Conflict(
                "another session was created at one of these times meanwhile: retry"
            ) from None

    async def _add_schedule(
        self,
        p: Principal,
        board_id: str,
        rule: cal.WeeklyRule,
        capacity: int,
        deadline_hours: int,
        place: str,
        video_link: str,
        weeks: int,
        ip: str | None,
    ) -> list[Session]:
        now = self.clock.now()
        async with self.db.transaction() as s:
            bv = await self._board_view(s, board_id)
            self._require_manager(p, bv)
            sched = Schedule(
                board_id=board_id,
                weekday=rule.weekday,
                start_local=rule.start.strftime("%H:%M"),
                duration_minutes=rule.duration_minutes,
                capacity=capacity,
                deadline_hours=deadline_hours,
                place=place.strip(),
                video_link=video_link.strip(),
                created_at=now,
            )
            s.add(sched)
            await s.flush()
            taken = set(
                (
                    await s.execute(select(Session.starts_at).where(Session.board_id == board_id))
                ).scalars()
            )
            created = []
            for start_at, end_at in cal.occurrences(rule, now, weeks):
                if start_at in {to_utc(t) for t in taken}:
                    continue
                sess = Session(
                    board_id=board_id,
                    schedule_id=sched.id,
                    starts_at=start_at,
                    ends_at=end_at,
                    submission_deadline=start_at - timedelta(hours=deadline_hours),
                    capacity=capacity,
                    place=sched.place,
                    video_link=sched.video_link,
                    status="planned",
                    sequence=0,
                    created_at=now,
                )
                s.add(sess)
                created.append(sess)
            await s.flush()
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.schedule.create",
                resource=f"rcp/board/{board_id}",
                details={"sessions": len(created)},
            )
            return created

    async def do_create_session(
        self,
        p: Principal,
        board_id: str,
        *,
        starts_local: str,
        duration_minutes: int,
        capacity: int,
        deadline_hours: int,
        place: str = "",
        video_link: str = "",
        ip: str | None = None,
    ) -> Session:
        try:
            start_local = datetime.fromisoformat(starts_local)
        except ValueError:
            raise ValidationError(
                "the session is not valid",
                fields={"starts_at": "a date and time (YYYY-MM-DDTHH:MM)"},
            ) from None
        start = (
            start_local.replace(tzinfo=LUXEMBOURG) if start_local.tzinfo is None else start_local
        )
        start = to_utc(start)
        if not 15 <= duration_minutes <= 600:
            raise ValidationError(
                "the session is not valid", fields={"duration_minutes": "between 15 and 600"}
            )
        self._check_session_fields(capacity, deadline_hours, place, video_link)
        if start <= self.clock.now():
            raise ValidationError(
                "the session is not valid", fields={"starts_at": "is in the past"}
            )
        try:
            async with self.db.transaction() as s:
                bv = await self._board_view(s, board_id)
                self._require_manager(p, bv)
                sess = Session(
                    board_id=board_id,
                    schedule_id=None,
                    starts_at=start,
                    ends_at=start + timedelta(minutes=duration_minutes),
                    submission_deadline=start - timedelta(hours=deadline_hours),
                    capacity=capacity,
                    place=place.strip(),
                    video_link=video_link.strip(),
                    status="planned",
                    sequence=0,
                    created_at=self.clock.now(),
                )
                s.add(sess)
                await s.flush()
                await self.audit.record(
                    s, actor_of(p, ip), "rcp.session.create", resource=f"rcp/session/{sess.id}"
                )
        except IntegrityError:
            raise Conflict(
                "the board already meets at that time", fields={"starts_at": "already taken"}
            ) from None
        return sess

    async def sessions(self, board_id: str, *, upcoming_only: bool = False) -> Sequence[Session]:
        async with self.db.session() as s:
            stmt = select(Session).where(Session.board_id == board_id).order_by(Session.starts_at)
            if upcoming_only:
                stmt = stmt.where(Session.ends_at > self.clock.now(), Session.status == "planned")
            return (await s.execute(stmt)).scalars().all()

    async def upcoming_for(self, p: Principal, *, limit: int = 8) -> list[tuple[Session, Board]]:
        """The next planned sessions of the boards the caller belongs to."""
        async with self.db.session() as s:
            rows = await s.execute(
                select(Session, Board)
                .join(Board, Board.id == Session.board_id)
                .join(BoardMember, BoardMember.board_id == Board.id)
                .where(
                    BoardMember.account_id == p.account_id,
                    Session.status == "planned",
                    Session.ends_at > self.clock.now(),
                )
                .order_by(Session.starts_at)
                .limit(limit)
            )
            return [(x, b) for x, b in rows.all()]

    @notifies_sessions
    async def do_cancel_session(
        self, p: Principal, session_id: str, *, ip: str | None = None
    ) -> list[str]:
        """Cancel a session: its SEQUENCE rises (calendars show it cancelled) and each case on
        its agenda goes to POSTPONED, to be scheduled again. Returns the postponed case ids."""
        async with self.db.transaction() as s:
            sess = await s.get(Session, session_id)
            if sess is None:
                raise NotFound("no such session")
            bv = await self._board_view(s, sess.board_id)
            self._require_manager(p, bv)
            if sess.status == "cancelled":
                raise Conflict("the session is already cancelled")
            sess.status = "cancelled"
            sess.sequence += 1
            cases = (
                (
                    await s.execute(
                        select(Case).where(
                            Case.session_id == session_id, Case.state == CaseState.SCHEDULED.value
                        )
                    )
                )
                .scalars()
                .all()
            )
            for c in cases:
                await self._transition(
                    s, c, "postpone", actor_of(p, ip), note="session cancelled", session_id=None
                )
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.session.cancel",
                resource=f"rcp/session/{session_id}",
                details={"postponed": len(cases)},
            )
            return [c.id for c in cases]

    def _calendar_session(
        self, sess: Session, board: BoardView, base_url: str
    ) -> cal.CalendarSession:
        coordinator = next((m for m in board.members if m.is_coordinator and m.email), None)
        return cal.CalendarSession(
            uid=f"rcp-session-{sess.id}@konsil",
            board_name=board.board.name,
            start=sess.starts_at,
            end=sess.ends_at,
            place=sess.place,
            video_link=sess.video_link,
            cancelled=sess.status == "cancelled",
            sequence=sess.sequence,
            url=f"{base_url}/rcp/sessions/{sess.id}",
            attendees=[(m.name, m.email) for m in board.members if m.email],
            organizer=(coordinator.name, coordinator.email)
            if coordinator and coordinator.email
            else None,
        )

    async def board_feed(self, p: Principal, board_id: str, base_url: str) -> bytes:
        bv = await self.board(board_id)
        if bv.member(p.account_id) is None and p.role != "admin":
            raise Forbidden("only the board's members see its calendar")
        sessions = await self.sessions(board_id)
        return cal.feed(
            f"RCP {bv.board.name}",
            [self._calendar_session(x, bv, base_url) for x in sessions],
            self.clock.now(),
        )

    async def member_feed(self, p: Principal, base_url: str) -> bytes:
        async with self.db.session() as s:
            board_ids = (
                (
                    await s.execute(
                        select(BoardMember.board_id).where(BoardMember.account_id == p.account_id)
                    )
                )
                .scalars()
                .all()
            )
            events = []
            for bid in board_ids:
                bv = await self._board_view(s, bid)
                rows = await s.execute(select(Session).where(Session.board_id == bid))
                events += [self._calendar_session(x, bv, base_url) for x in rows.scalars()]
        events.sort(key=lambda e: e.start)
        return cal.feed(f"RCP {p.display_name}", events, self.clock.now())

    async def invitation(self, p: Principal, session_id: str, base_url: str) -> bytes:
        async with self.db.session() as s:
            sess = await s.get(Session, session_id)
            if sess is None:
                raise NotFound("no such session")
            bv = await self._board_view(s, sess.board_id)
        if bv.member(p.account_id) is None and p.role != "admin":
            raise Forbidden("only the board's members receive its invitations")
        return cal.invitation(self._calendar_session(sess, bv, base_url), self.clock.now())

    # ------------------------------------------------------------------ cases

    async def _patient(self, s: AsyncSession, patient_ref: str) -> Patient:
        ref = patient_ref.replace(" ", "")
        if not ref:
            raise ValidationError("the patient is missing", fields={"patient": "required"})
        if ref.isdigit():
            matricule = check_matricule(ref, today=self.clock.now().date())
            patient = (
                await s.execute(select(Patient).where(Patient.matricule == matricule))
            ).scalar_one_or_none()
            if patient is None:
                raise ValidationError(
                    "no patient with this matricule is registered",
                    fields={"patient": "unknown matricule: register the patient first"},
                )
            return patient
        patient = await s.get(Patient, ref)
        if patient is None:
            raise ValidationError("unknown patient", fields={"patient": "no such patient"})
        return patient

    async def do_create_case(
        self,
        p: Principal,
        board_id: str,
        patient_ref: str,
        data: Mapping[str, Any],
        *,
        submit: bool = False,
        ip: str | None = None,
    ) -> Case:
        if p.practitioner_id is None:
            raise Forbidden("only practitioners refer cases")
        fiche = check_submittable(data, submit=submit)
        now = self.clock.now()
        async with self.db.transaction() as s:
            if await s.get(Board, board_id) is None:
                raise ValidationError("unknown board", fields={"board_id": "no such board"})
            patient = await self._patient(s, patient_ref)
            case = Case(
                board_id=board_id,
                patient_id=patient.id,
                referrer_account_id=p.account_id,
                state=CaseState.DRAFT.value,
                version=1,
                agenda_position=0,
                fiche=fiche.to_json(),
                status_note="",
                created_at=now,
                updated_at=now,
            )
            s.add(case)
            await s.flush()
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.case.create",
                patient_id=patient.id,
                resource=f"rcp/case/{case.id}",
            )
            if submit:
                await self._transition(s, case, "submit", actor_of(p, ip))
        if submit:
            await self._board_changed(case.board_id)
        return case

    async def do_update_fiche(
        self,
        p: Principal,
        case_id: str,
        data: Mapping[str, Any],
        *,
        submit: bool = False,
        expected_version: int | None = None,
        ip: str | None = None,
    ) -> Case:
        fiche = check_submittable(data, submit=submit)
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            if case.referrer_account_id != p.account_id:
                raise Forbidden("only the referring physician edits the fiche")
            if case.state not in (CaseState.DRAFT.value, CaseState.NEEDS_INFO.value):
                raise Conflict(
                    Reason(
                        "the fiche can only be edited as a draft or when information is "
                        "requested (the case is {state})",
                        state=case.state,
                    )
                )
            await self._bump(s, case, expected_version, fiche=fiche.to_json())
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.case.edit",
                patient_id=case.patient_id,
                resource=f"rcp/case/{case.id}",
            )
            if submit:
                await self._transition(s, case, "submit", actor_of(p, ip))
        if submit:
            await self._board_changed(case.board_id)
        return case

    async def _case(self, s: AsyncSession, case_id: str) -> Case:
        case = await s.get(Case, case_id)
        if case is None:
            raise NotFound("no such case")
        return case

    async def _bump(
        self, s: AsyncSession, case: Case, expected_version: int | None, **values: Any
    ) -> None:
        """Conditional UPDATE: applies only if nobody changed the case since we read it."""
        if expected_version is not None and expected_version != case.version:
            raise Conflict(
                "the case was changed by someone else meanwhile: reload it",
                fields={"version": Reason("now {version}", version=case.version)},
            )
        result = await s.execute(
            update(Case)
            .where(Case.id == case.id, Case.version == case.version)
            .values(version=case.version + 1, updated_at=self.clock.now(), **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise Conflict("the case was changed by someone else meanwhile: reload it")
        await s.refresh(case)

    async def _transition(
        self,
        s: AsyncSession,
        case: Case,
        action: str,
        actor: Actor,
        *,
        note: str = "",
        expected_version: int | None = None,
        **values: Any,
    ) -> CaseState:
        before = CaseState(case.state)
        after = next_state(before, action)
        touch(case.session_id)
        await self._bump(
            s, case, expected_version, state=after.value, status_note=note[:2000], **values
        )
        touch(case.session_id)
        await self.audit.record(
            s,
            actor,
            f"rcp.case.{action}",
            patient_id=case.patient_id,
            resource=f"rcp/case/{case.id}",
            details={"from": before.value, "to": after.value},
        )
        return after

    async def _membership(
        self, s: AsyncSession, board_id: str, account_id: str
    ) -> MemberView | None:
        bv = await self._board_view(s, board_id)
        return bv.member(account_id)

    async def _check_can_see(self, s: AsyncSession, p: Principal, case: Case) -> MemberView | None:
        m = await self._membership(s, case.board_id, p.account_id)
        if m is None and case.referrer_account_id != p.account_id:
            raise Forbidden("only the board's members and the referring physician see this case")
        return m

    async def get_case(
        self, p: Principal, case_id: str, *, purpose: str = "view", ip: str | None = None
    ) -> CaseView:
        """One case, for a board member or the referring physician (the read is audited)."""
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            try:
                viewer = await self._check_can_see(s, p, case)
            except Forbidden:
                denied: str | None = case.patient_id
            else:
                await self.audit.record(
                    s,
                    actor_of(p, ip),
                    "rcp.case.read",
                    patient_id=case.patient_id,
                    resource=f"rcp/case/{case.id}",
                    details={"purpose": purpose},
                )
                return await self._view(s, p, case, viewer)
        # The refused read is audited in its own transaction (the first one read only).
        async with self.db.transaction() as s:
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.case.read",
                patient_id=denied,
                resource=f"rcp/case/{case_id}",
                outcome="denied",
            )
        raise Forbidden("only the board's members and the referring physician see this case")

    async def _view(
        self, s: AsyncSession, p: Principal, case: Case, viewer: MemberView | None
    ) -> CaseView:
        board = await s.get(Board, case.board_id)
        patient = await s.get(Patient, case.patient_id)
        referrer = await s.get(Account, case.referrer_account_id)
        assert board is not None and patient is not None and referrer is not None
        sess = await s.get(Session, case.session_id) if case.session_id else None
        decision = await s.get(CaseDecision, case.id)
        atts = (
            (
                await s.execute(
                    select(Attachment)
                    .where(Attachment.case_id == case.id)
                    .order_by(Attachment.uploaded_at)
                )
            )
            .scalars()
            .all()
        )
        return CaseView(
            case,
            board,
            patient,
            referrer.display_name,
            sess,
            decision,
            tuple(atts),
            viewer,
            case.referrer_account_id == p.account_id,
            await self._delivery(s, case.publication_ref),
        )

    async def _delivery(self, s: AsyncSession, ref: str | None) -> Delivery | None:
        doc_id = document_id_of(ref)
        if doc_id is None:
            return None
        msg = (
            await s.execute(
                select(OutboxMessage)
                .where(OutboxMessage.document_id == doc_id, OutboxMessage.target == "dsp")
                .order_by(OutboxMessage.created_at.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        if msg is None:
            return Delivery(doc_id, "unknown", 0, None, None)
        return Delivery(doc_id, msg.status, msg.attempts, msg.last_error, msg.delivered_at)

    async def my_cases(
        self, p: Principal, *, ip: str | None = None
    ) -> list[tuple[Case, Patient, Board]]:
        """The caller's referred cases (each listed patient is an audited read)."""
        async with self.db.transaction() as s:
            rows = (
                await s.execute(
                    select(Case, Patient, Board)
                    .join(Patient, Patient.id == Case.patient_id)
                    .join(Board, Board.id == Case.board_id)
                    .where(Case.referrer_account_id == p.account_id)
                    .order_by(Case.updated_at.desc())
                    .limit(200)
                )
            ).all()
            await self._audit_listed(s, p, ip, [c for c, _pat, _b in rows])
            return [(c, pat, b) for c, pat, b in rows]

    async def published_for(
        self, p: Principal, *, limit: int = 8, ip: str | None = None
    ) -> list[tuple[Notice, Patient, Board]]:
        """Reports published for the caller's referred cases, newest first (dashboard)."""
        async with self.db.transaction() as s:
            rows = (
                await s.execute(
                    select(Notice, Case, Patient, Board)
                    .join(Case, Case.id == Notice.case_id)
                    .join(Patient, Patient.id == Case.patient_id)
                    .join(Board, Board.id == Notice.board_id)
                    .where(
                        Notice.recipient_account_id == p.account_id,
                        Notice.kind == REPORT_PUBLISHED,
                    )
                    .order_by(Notice.created_at.desc())
                    .limit(limit)
                )
            ).all()
            await self._audit_listed(s, p, ip, [c for _n, c, _pat, _b in rows])
            return [(n, pat, b) for n, _c, pat, b in rows]

    async def board_cases(
        self, p: Principal, board_id: str, states: Sequence[CaseState], *, ip: str | None = None
    ) -> list[AgendaItem]:
        async with self.db.transaction() as s:
            if await self._membership(s, board_id, p.account_id) is None:
                raise Forbidden("only the board's members see its cases")
            return await self._cases_in(
                s, p, ip, Case.board_id == board_id, Case.state.in_([x.value for x in states])
            )

    async def _audit_listed(
        self, s: AsyncSession, p: Principal, ip: str | None, cases: Sequence[Case]
    ) -> None:
        """Each case shown in a listing is an audited read (one chain append for all)."""
        await self.audit.record_many(
            s,
            actor_of(p, ip),
            [
                AuditEntry("rcp.case.list", patient_id=c.patient_id, resource=f"rcp/case/{c.id}")
                for c in cases
            ],
        )

    async def _cases_in(
        self, s: AsyncSession, p: Principal, ip: str | None, *where: Any
    ) -> list[AgendaItem]:
        rows = (
            await s.execute(
                select(Case, Patient)
                .join(Patient, Patient.id == Case.patient_id)
                .where(*where)
                .order_by(Case.agenda_position, Case.created_at)
            )
        ).all()
        await self._audit_listed(s, p, ip, [c for c, _pat in rows])
        return [AgendaItem(c, pat) for c, pat in rows]

    @notifies_sessions
    async def do_transition(
        self,
        p: Principal,
        case_id: str,
        action: str,
        *,
        session_id: str | None = None,
        note: str = "",
        expected_version: int | None = None,
        ip: str | None = None,
    ) -> Case:
        """Triage and simple moves: submit, request_info, reject, schedule, postpone, cancel."""
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            viewer = await self._check_can_see(s, p, case)
            triager = viewer is not None and (viewer.is_coordinator or viewer.is_chair)
            referrer = case.referrer_account_id == p.account_id
            values: dict[str, Any] = {}
            if action == "submit":
                if not referrer:
                    raise Forbidden("only the referring physician submits the case")
                check_submittable(case.fiche, submit=True)
            elif action == "cancel":
                if not (referrer or triager):
                    raise Forbidden(
                        "only the referring physician or the board's coordinators cancel"
                    )
                values["session_id"] = None
            elif action in ("request_info", "reject", "postpone", "schedule"):
                if not triager:
                    raise Forbidden("only the board's coordinators and chairs do this")
                if action in ("request_info", "reject") and not note.strip():
                    raise ValidationError(
                        "say why", fields={"note": "required: the referring physician reads it"}
                    )
                if action == "postpone":
                    values["session_id"] = None
                if action == "schedule":
                    values.update(await self._check_schedule(s, case, session_id))
            elif action in ("decide", "draft_report", "sign", "publish"):
                raise Conflict(Reason("{action} has its own form", action=action))
            else:
                next_state(CaseState(case.state), action)  # raises for unknown actions
            await self._transition(
                s,
                case,
                action,
                actor_of(p, ip),
                note=note.strip(),
                expected_version=expected_version,
                **values,
            )
        if action == "submit":
            await self._board_changed(case.board_id)
        return case

    async def _check_schedule(
        self, s: AsyncSession, case: Case, session_id: str | None
    ) -> dict[str, Any]:
        errors: dict[str, str] = {}
        if not fiche_from_json(case.fiche).patient_informed:
            errors["patient_informed"] = (
                "the patient must be informed that the case is presented before it is scheduled"
            )
        sess = await s.get(Session, session_id) if session_id else None
        if sess is None or sess.board_id != case.board_id:
            errors["session_id"] = "choose a session of this board"
        elif sess.status != "planned":
            errors["session_id"] = "the session is cancelled"
        elif to_utc(sess.ends_at) <= self.clock.now():
            errors["session_id"] = "the session is over"
        elif (
            to_utc(sess.submission_deadline) < self.clock.now()
            and fiche_from_json(case.fiche).priority < 2
        ):
            # Past the deadline only urgent cases still join the agenda.
            errors["session_id"] = "the submission deadline of this session has passed"
        if errors:
            raise ValidationError("the case cannot be scheduled", fields=errors)
        assert sess is not None
        count = (
            await s.execute(
                select(func.count())
                .select_from(Case)
                .where(Case.session_id == sess.id, Case.state == CaseState.SCHEDULED.value)
            )
        ).scalar_one()
        if count >= sess.capacity:
            raise Conflict("the session's agenda is full", fields={"session_id": "full"})
        # Place the case after every case of equal or higher priority (manual reorder later).
        agenda = (
            (
                await s.execute(
                    select(Case)
                    .where(Case.session_id == sess.id, Case.state == CaseState.SCHEDULED.value)
                    .order_by(Case.agenda_position)
                )
            )
            .scalars()
            .all()
        )
        prio = fiche_from_json(case.fiche).priority
        pos = 0
        for i, other in enumerate(agenda):
            if fiche_from_json(other.fiche).priority >= prio:
                pos = i + 1
        for i, other in enumerate(agenda):
            other.agenda_position = i if i < pos else i + 1
        return {"session_id": sess.id, "agenda_position": pos}

    @notifies_sessions
    async def do_move(
        self, p: Principal, case_id: str, delta: int, *, ip: str | None = None
    ) -> None:
        """Manual agenda reorder: move a case up (-1) or down (+1) in its session."""
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            viewer = await self._check_can_see(s, p, case)
            if viewer is None or not (viewer.is_coordinator or viewer.is_chair):
                raise Forbidden("only the board's coordinators and chairs order the agenda")
            if case.state != CaseState.SCHEDULED.value or case.session_id is None:
                raise Conflict("only a scheduled case has a place on an agenda")
            agenda = list(
                (
                    await s.execute(
                        select(Case)
                        .where(
                            Case.session_id == case.session_id,
                            Case.state == CaseState.SCHEDULED.value,
                        )
                        .order_by(Case.agenda_position, Case.created_at)
                    )
                ).scalars()
            )
            touch(case.session_id)
            i = next(k for k, c in enumerate(agenda) if c.id == case.id)
            j = max(0, min(len(agenda) - 1, i + delta))
            agenda.insert(j, agenda.pop(i))
            for k, c in enumerate(agenda):
                c.agenda_position = k
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.agenda.move",
                patient_id=case.patient_id,
                resource=f"rcp/case/{case.id}",
                details={"position": j},
            )

    # ------------------------------------------------------------------ session day

    async def _attendees(self, s: AsyncSession, bv: BoardView, session_id: str) -> list[Attendee]:
        present = {
            a.account_id: a
            for a in (
                await s.execute(select(Attendance).where(Attendance.session_id == session_id))
            ).scalars()
        }
        return [
            Attendee(
                m.account_id,
                m.name,
                present[m.account_id].specialty if m.account_id in present else m.specialty,
                m.account_id in present,
            )
            for m in bv.members
        ]

    async def quorum(self, p: Principal, session_id: str) -> QuorumStatus:
        async with self.db.session() as s:
            sess = await s.get(Session, session_id)
            if sess is None:
                raise NotFound("no such session")
            bv = await self._board_view(s, sess.board_id)
            if bv.member(p.account_id) is None:
                raise Forbidden("only the board's members follow its sessions")
            return evaluate(bv.rule, await self._attendees(s, bv, session_id))

    async def session_view(
        self, p: Principal, session_id: str, *, ip: str | None = None
    ) -> SessionView:
        async with self.db.transaction() as s:
            sess = await s.get(Session, session_id)
            if sess is None:
                raise NotFound("no such session")
            bv = await self._board_view(s, sess.board_id)
            viewer = bv.member(p.account_id)
            if viewer is None:
                raise Forbidden("only the board's members see its sessions")
            agenda = await self._cases_in(
                s, p, ip, Case.session_id == session_id, Case.state != CaseState.CANCELLED.value
            )
            waiting: list[AgendaItem] = []
            if viewer.is_coordinator or viewer.is_chair:
                waiting = await self._cases_in(
                    s,
                    p,
                    ip,
                    Case.board_id == sess.board_id,
                    Case.state.in_([CaseState.SUBMITTED.value, CaseState.POSTPONED.value]),
                )
            attendees = await self._attendees(s, bv, session_id)
            return SessionView(
                sess,
                bv,
                tuple(agenda),
                frozenset(a.account_id for a in attendees if a.present),
                evaluate(bv.rule, attendees),
                viewer,
                tuple(waiting),
            )

    @notifies_sessions
    async def do_check_in(
        self,
        p: Principal,
        session_id: str,
        account_id: str,
        present: bool,
        *,
        ip: str | None = None,
    ) -> QuorumStatus:
        try:
            return await self._check_in(p, session_id, account_id, present, ip)
        except IntegrityError:
            # Two check-ins of the same person at once: the other one recorded it.
            return await self.quorum(p, session_id)

    async def _check_in(
        self, p: Principal, session_id: str, account_id: str, present: bool, ip: str | None
    ) -> QuorumStatus:
        touch(session_id)
        async with self.db.transaction() as s:
            sess = await s.get(Session, session_id)
            if sess is None:
                raise NotFound("no such session")
            if sess.status != "planned":
                raise Conflict("the session is cancelled")
            bv = await self._board_view(s, sess.board_id)
            me = bv.member(p.account_id)
            target = bv.member(account_id)
            if me is None:
                raise Forbidden("only the board's members take part")
            if account_id != p.account_id and not (me.is_coordinator or me.is_chair):
                raise Forbidden("only coordinators and chairs check in others")
            if target is None:
                raise ValidationError(
                    "not a member", fields={"account_id": "not a member of this board"}
                )
            row = await s.get(Attendance, (session_id, account_id))
            if present and row is None:
                s.add(
                    Attendance(
                        session_id=session_id,
                        account_id=account_id,
                        specialty=target.specialty,
                        checked_in_at=self.clock.now(),
                        checked_in_by=p.account_id,
                    )
                )
            elif not present and row is not None:
                await s.delete(row)
            await s.flush()
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.attendance",
                resource=f"rcp/session/{session_id}",
                details={"account": account_id, "present": present},
            )
            return evaluate(bv.rule, await self._attendees(s, bv, session_id))

    @notifies_sessions
    async def do_decide(
        self,
        p: Principal,
        case_id: str,
        data: Mapping[str, Any],
        *,
        expected_version: int | None = None,
        ip: str | None = None,
    ) -> Case:
        decision = check_decision(data)
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            viewer = await self._check_can_see(s, p, case)
            if viewer is None or not (viewer.is_chair or viewer.is_coordinator):
                raise Forbidden("only the board's chairs and coordinators record decisions")
            next_state(CaseState(case.state), "decide")
            assert case.session_id is not None
            bv = await self._board_view(s, case.board_id)
            attendees = await self._attendees(s, bv, case.session_id)
            status = evaluate(bv.rule, attendees)
            if not status.met:
                raise Conflict(
                    Reason(
                        "the quorum is not met ({reasons}): the case cannot be decided, "
                        "postpone it instead",
                        reasons="; ".join(status.reasons),
                    ),
                    fields={"quorum": joined(status.reasons)},
                )
            self._check_reportable(bv, case, attendees)
            await self._transition(
                s, case, "decide", actor_of(p, ip), expected_version=expected_version
            )
            s.add(
                CaseDecision(
                    case_id=case.id,
                    session_id=case.session_id,
                    decision=_decision_json(decision),
                    quorum=status.to_json(),
                    participants=[
                        {"account_id": a.account_id, "name": a.name, "specialty": a.specialty}
                        for a in status.present
                    ],
                    decided_by=p.account_id,
                    decided_at=self.clock.now(),
                )
            )
            await s.flush()
            return case

    @staticmethod
    def _check_reportable(bv: BoardView, case: Case, attendees: Sequence[Attendee]) -> None:
        """Before a decision: what the signed report will need and only the board can supply
        (the fiche was checked at submission; a case submitted under older rules is checked
        again). Refused with one message per field, so publication does not fail later."""
        errors: dict[str, str] = {}
        try:
            check_submittable(case.fiche, submit=True)
        except ValidationError as exc:
            errors.update({f"fiche.{k}": v for k, v in exc.fields.items()})
        if bv.board.host_organisation_id is None:
            errors["host_organisation_id"] = (
                "the board has no host organisation: its reports cannot be signed and published"
            )
        present = {a.account_id for a in attendees if a.present}
        if not any(m.is_chair and m.specialty and m.account_id in present for m in bv.members):
            errors["chair"] = (
                "no chair of the board with a specialty is present: the report is signed by a "
                "participating chair"
            )
        if errors:
            raise ValidationError(
                Reason(
                    "the case cannot be decided — {problems}",
                    problems="; ".join(f"{k}: {v}" for k, v in errors.items()),
                ),
                fields=errors,
            )

    @notifies_sessions
    async def do_draft_report(
        self, p: Principal, case_id: str, *, ip: str | None = None
    ) -> RcpReportData:
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            viewer = await self._check_can_see(s, p, case)
            if viewer is None or not (viewer.is_chair or viewer.is_coordinator):
                raise Forbidden("only the board's chairs and coordinators draft reports")
            next_state(CaseState(case.state), "draft_report")
            report = await self._build_report(s, case)
            await self._transition(
                s, case, "draft_report", actor_of(p, ip), report=report.to_json()
            )
            return report

    async def _person(
        self, s: AsyncSession, account_id: str, specialty: str | None = None
    ) -> ReportPerson:
        a = await s.get(Account, account_id)
        assert a is not None
        pr = await s.get(Practitioner, a.practitioner_id) if a.practitioner_id else None
        org = await s.get(Organisation, pr.organisation_id) if pr and pr.organisation_id else None
        return ReportPerson(
            account_id=a.id,
            practitioner_id=a.practitioner_id,
            name=a.display_name,
            specialty=specialty or (pr.specialty if pr else None),
            organisation=org.name if org else None,
            given_name=pr.given_name if pr else "",
            family_name=pr.family_name if pr else "",
            cns_provider_code=pr.cns_provider_code if pr else None,
        )

    async def _build_report(self, s: AsyncSession, case: Case) -> RcpReportData:
        view_board = await self._board_view(s, case.board_id)
        decision_row = await s.get(CaseDecision, case.id)
        patient = await s.get(Patient, case.patient_id)
        sess = await s.get(Session, case.session_id) if case.session_id else None
        assert decision_row is not None and patient is not None and sess is not None
        f = fiche_from_json(case.fiche)
        d = decision_row.decision
        q = decision_row.quorum
        participants = []
        for part in decision_row.participants:
            participants.append(await self._person(s, part["account_id"], part.get("specialty")))
        tnm = (
            ReportTnm(f.tnm_kind, f.tnm_t, f.tnm_n, f.tnm_m, f.stage_group, f.tnm_edition)
            if f.tnm_t or f.stage_group
            else None
        )
        return RcpReportData(
            case_id=case.id,
            patient=ReportPatient(
                patient.id,
                patient.matricule,
                patient.given_name,
                patient.family_name,
                patient.birth_date,
                patient.sex,
            ),
            board_id=view_board.board.id,
            board_name=view_board.board.name,
            tumour_domain=view_board.board.tumour_domain,
            host_organisation=view_board.host_organisation,
            session_id=sess.id,
            session_start=to_utc(sess.starts_at),
            question=f.question,
            diagnosis=ReportDiagnosis(
                f.icd10,
                f.icdo_topography,
                f.icdo_morphology,
                f.origin,
                f.laterality,
                f.diagnosis_label,
                f.topography_label,
                f.morphology_label,
            ),
            tnm=tnm,
            ecog=f.ecog,
            history=f.history,
            exams=f.exams,
            proposal=tuple(ProposalItem(i["kind"], i.get("detail", "")) for i in d["proposal"]),
            guideline_conform=d["guideline_conform"],
            deviation_justification=d["deviation_justification"],
            trial_proposed=d["trial_proposed"],
            trial_name=d["trial_name"],
            conclusion=d["conclusion"],
            presentation=f.presentation,
            patient_informed=f.patient_informed,
            guideline=d.get("guideline", ""),
            trial_id=d.get("trial_id", ""),
            quorum=ReportQuorum(
                q["met"],
                q["physicians_present"],
                tuple(q["specialties_present"]),
                tuple(q["missing_required"]),
            ),
            participants=tuple(participants),
            referring_physician=await self._person(s, case.referrer_account_id),
            case_status=CaseState.REPORT_DRAFT.value,
        )

    @notifies_sessions
    async def do_sign(
        self, p: Principal, case_id: str, password: str, *, ip: str | None = None
    ) -> RcpReportData:
        """A chair signs the drafted report after typing their password again."""
        async with self.db.session() as s:
            case = await self._case(s, case_id)
            m = await self._membership(s, case.board_id, p.account_id)
        if m is None or not m.is_chair:
            raise Forbidden("only a chair of the board signs its reports")
        try:
            await self.auth.check_password(p.username, password, ip=ip)
        except KonsilError as exc:
            raise Forbidden(
                "the password is not correct: the report was not signed",
                fields={"password": "incorrect"},
            ) from exc
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            next_state(CaseState(case.state), "sign")
            assert case.report is not None
            report = RcpReportData.from_json(case.report)
            if not m.specialty or p.account_id not in {x.account_id for x in report.participants}:
                raise ValidationError(
                    "the report is signed by a chair who took part in the discussion, with a "
                    "specialty",
                    fields={"chair": "not a participant of this discussion, or no specialty"},
                )
            now = self.clock.now()
            signed = RcpReportData(
                **{
                    **{k: getattr(report, k) for k in report.__dataclass_fields__},
                    "legal_authenticator": await self._person(s, p.account_id, m.specialty),
                    "signed_at": now,
                    "case_status": CaseState.VALIDATED.value,
                }
            )
            await self._transition(
                s,
                case,
                "sign",
                actor_of(p, ip),
                report=signed.to_json(),
                signed_by=p.account_id,
                signed_at=now,
            )
            return signed

    @notifies_sessions
    async def do_publish(self, p: Principal | None, case_id: str, *, ip: str | None = None) -> str:
        """VALIDATED → PUBLISHED through the ReportPublisher, in one transaction."""
        actor = actor_of(p, ip) if p else Actor("system")
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            if p is not None:
                m = await self._membership(s, case.board_id, p.account_id)
                if m is None or not (m.is_chair or m.is_coordinator):
                    raise Forbidden("only the board's chairs and coordinators publish")
            next_state(CaseState(case.state), "publish")
            assert case.report is not None
            report = RcpReportData.from_json(case.report)
            ref = await self.publisher.publish(s, report)
            await self._transition(
                s, case, "publish", actor, publication_ref=ref, published_at=self.clock.now()
            )
            # the referring physician's notice commits (or vanishes) with the publication
            add_notice(
                s,
                case_id=case.id,
                board_id=case.board_id,
                recipient_account_id=case.referrer_account_id,
                kind=REPORT_PUBLISHED,
                now=self.clock.now(),
            )
        for hook in self.after_publish:
            try:
                await hook(case_id, ref)
            except Exception:
                log.exception("after-publish hook failed for an RCP case")
        return ref

    # ------------------------------------------------------------------ attachments

    async def do_add_attachment(
        self,
        p: Principal,
        case_id: str,
        filename: str,
        content_type: str,
        data: bytes,
        *,
        ip: str | None = None,
    ) -> Attachment:
        content_type = content_type.split(";")[0].strip().lower()
        if len(data) > MAX_ATTACHMENT_BYTES:
            raise TooLarge(
                Reason(
                    "an attachment is at most {mib} MiB", mib=MAX_ATTACHMENT_BYTES // (1024 * 1024)
                )
            )
        if not data:
            raise ValidationError("the file is empty", fields={"file": "empty"})
        if content_type not in ATTACHMENT_TYPES:
            raise ValidationError(
                "this file type is not accepted",
                fields={"file": "PDF, PNG, JPEG, DICOM or plain text only"},
            )
        magic, offset = ATTACHMENT_TYPES[content_type]
        if data[offset : offset + len(magic)] != magic:
            raise ValidationError(
                "the file's content does not match its type",
                fields={"file": Reason("not a {type} file", type=content_type)},
            )
        name = SAFE_NAME.sub("_", Path(filename or "file").name)[:200] or "file"
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            viewer = await self._check_can_see(s, p, case)
            if case.referrer_account_id != p.account_id and viewer is None:
                raise Forbidden("not allowed")
            if CaseState(case.state) not in (
                CaseState.DRAFT,
                CaseState.SUBMITTED,
                CaseState.NEEDS_INFO,
                CaseState.SCHEDULED,
                CaseState.POSTPONED,
            ):
                raise Conflict("attachments are added before the case is discussed")
            att = Attachment(
                case_id=case.id,
                filename=name,
                content_type=content_type,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                uploaded_by=p.account_id,
                uploaded_at=self.clock.now(),
            )
            s.add(att)
            await s.flush()
            path = self.files / case.id / att.id
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.case.attach",
                patient_id=case.patient_id,
                resource=f"rcp/case/{case.id}",
                details={"attachment": att.id},
            )
            return att

    async def attachment(
        self, p: Principal, case_id: str, attachment_id: str, *, ip: str | None = None
    ) -> tuple[Attachment, Path]:
        async with self.db.transaction() as s:
            case = await self._case(s, case_id)
            await self._check_can_see(s, p, case)
            att = await s.get(Attachment, attachment_id)
            if att is None or att.case_id != case.id:
                raise NotFound("no such attachment")
            await self.audit.record(
                s,
                actor_of(p, ip),
                "rcp.case.attachment.read",
                patient_id=case.patient_id,
                resource=f"rcp/case/{case.id}",
                details={"attachment": att.id},
            )
            return att, self.files / case.id / att.id


def _decision_json(d: Decision) -> dict[str, Any]:
    return {
        "proposal": [{"kind": i.kind, "detail": i.detail} for i in d.proposal],
        "guideline_conform": d.guideline_conform,
        "deviation_justification": d.deviation_justification,
        "trial_proposed": d.trial_proposed,
        "trial_name": d.trial_name,
        "conclusion": d.conclusion,
        "guideline": d.guideline,
        "trial_id": d.trial_id,
    }
