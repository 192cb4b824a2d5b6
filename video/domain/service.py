"""Appointments, invitations, guest entry and consent, pre-call results, chat, files and the
after-call documents. check_* validates; do_* changes state; every step is audited with the
appointment's patient_id."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import SYSTEM, Actor, AuditLog
from konsil.clock import LUXEMBOURG, Clock, to_utc
from konsil.config import VideoConfig
from konsil.db import Database
from konsil.errors import Conflict, Forbidden, NotFound, Reason, TooLarge, ValidationError
from konsil.identity.matricule import check_matricule
from konsil.identity.models import Patient
from konsil.identity.service import EMAIL_RE, NewPatient, add_patient, check_new_patient
from video.domain.crypto import (
    FileSealer,
    make_invitation_token,
    new_guest_secret,
    read_invitation_token,
    sha256_hex,
)
from video.domain.documents import DocumentIssuer, IssueContext, Prepared, check_after_call
from video.models import (
    VideoAppointment,
    VideoConsent,
    VideoDocument,
    VideoFile,
    VideoInvitation,
    VideoMessage,
)

CONSENT_VERSION = "2026-1"
ACTIVE = ("scheduled", "waiting", "admitted")
DOCUMENT_KINDS = ("report", "sick_leave", "prescription")
ALLOWED_TYPES = {
    "application/pdf": (b"%PDF-",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "text/plain": (),
}
SAFE_NAME = re.compile(r"[^A-Za-z0-9._ \-()àâäéèêëïîôöùûüçÀÂÄÉÈÊËÏÎÔÖÙÛÜÇ]")


@dataclass(frozen=True)
class GuestPrincipal:
    """A patient admitted through an invitation: may act on this one appointment only."""

    invitation_id: str
    appointment_id: str
    patient_id: str

    def actor(self, ip: str | None) -> Actor:
        return Actor(f"guest:{self.invitation_id}", ip)


@dataclass(frozen=True)
class Party:
    """Who is acting on an appointment: its practitioner or its patient (guest)."""

    role: str  # doctor | patient
    actor: Actor


@dataclass(frozen=True)
class ScheduleRequest:
    starts_at: datetime
    duration_minutes: int
    reason: str | None
    patient_id: str | None
    new_patient: NewPatient | None
    email: str | None
    phone: str | None


@dataclass(frozen=True)
class Invitation:
    token: str
    expires_at: datetime


def files_limited(max_bytes: int) -> Reason:
    return Reason("files are limited to {mib} MiB", mib=max_bytes // 1024 // 1024)


def parse_local_datetime(raw: str, field: str, errors: dict[str, str]) -> datetime | None:
    """A ``datetime-local`` form value, in Luxembourg time, as aware UTC."""
    try:
        naive = datetime.fromisoformat(raw.strip())
    except ValueError:
        errors[field] = "a date and time is required"
        return None
    if naive.tzinfo is not None:
        return to_utc(naive)
    return to_utc(naive.replace(tzinfo=LUXEMBOURG))


def check_schedule(form: Mapping[str, str], now: datetime) -> ScheduleRequest:
    errors: dict[str, str] = {}
    starts = parse_local_datetime(form.get("starts_at", ""), "starts_at", errors)
    if starts is not None and starts < now - timedelta(minutes=5):
        errors["starts_at"] = "is in the past"
    try:
        duration = int(form.get("duration_minutes", "20") or "20")
        if not 5 <= duration <= 120:
            errors["duration_minutes"] = "between 5 and 120 minutes"
    except ValueError:
        duration = 0
        errors["duration_minutes"] = "a number of minutes"
    email = form.get("email", "").strip() or None
    phone = form.get("phone", "").strip() or None
    if email and not EMAIL_RE.match(email):
        errors["email"] = "is not an e-mail address"
    if phone and not re.fullmatch(r"\+?[0-9 ./-]{6,20}", phone):
        errors["phone"] = "is not a phone number"
    reason = form.get("reason", "").strip()[:200] or None
    patient_id = form.get("patient_id", "").strip() or None
    new_patient = None
    if patient_id is None:
        birth = None
        try:
            birth = date.fromisoformat(form.get("birth_date", "").strip())
        except ValueError:
            errors["birth_date"] = "required (YYYY-MM-DD)"
        if birth is not None:
            try:
                new_patient = check_new_patient(
                    NewPatient(
                        form.get("matricule", ""),
                        form.get("given_name", ""),
                        form.get("family_name", ""),
                        birth,
                        email=email,
                        phone=phone,
                    ),
                    now.date(),
                )
            except ValidationError as exc:
                errors.update(exc.fields)
    if errors or starts is None:
        raise ValidationError("the appointment is not valid", fields=errors)
    return ScheduleRequest(starts, duration, reason, patient_id, new_patient, email, phone)


class VideoService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        audit: AuditLog,
        cfg: VideoConfig,
        secret_key: str,
        issuer: DocumentIssuer | None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.audit = audit
        self.cfg = cfg
        self.secret_key = secret_key
        self.issuer = issuer
        self.sealer = FileSealer(secret_key)

    # ------------------------------------------------------------------ appointments

    async def do_schedule(self, actor: Actor, req: ScheduleRequest) -> VideoAppointment:
        now = self.clock.now()
        async with self.db.transaction() as s:
            if req.patient_id is not None:
                patient = await s.get(Patient, req.patient_id)
                if patient is None:
                    raise ValidationError(
                        "no such patient", fields={"patient_id": "unknown patient"}
                    )
            else:
                assert req.new_patient is not None
                np = req.new_patient
                existing = (
                    await s.execute(select(Patient).where(Patient.matricule == np.matricule))
                ).scalar_one_or_none()
                if existing is not None:
                    if existing.birth_date != np.birth_date:
                        raise Conflict(
                            "a patient with this matricule exists with another birth date",
                            fields={"matricule": "already registered"},
                        )
                    patient = existing
                else:
                    patient = await add_patient(s, self.audit, actor, np, now)
            appt = VideoAppointment(
                practitioner_account_id=actor.id,
                patient_id=patient.id,
                starts_at=req.starts_at,
                duration_minutes=req.duration_minutes,
                reason=req.reason,
                status="scheduled",
                contact_email=req.email or patient.email,
                contact_phone=req.phone or patient.phone,
                created_at=now,
            )
            s.add(appt)
            await s.flush()
            await self.audit.record(
                s,
                actor,
                "video.schedule",
                patient_id=patient.id,
                resource=f"video/{appt.id}",
            )
            return appt

    async def _own(self, s: AsyncSession, actor: Actor, appointment_id: str) -> VideoAppointment:
        appt = await s.get(VideoAppointment, appointment_id)
        if appt is None:
            raise NotFound("no such appointment")
        if appt.practitioner_account_id != actor.id:
            await self.audit.record(
                s,
                actor,
                "video.access",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
                outcome="denied",
            )
            raise Forbidden("this appointment belongs to another practitioner")
        return appt

    async def appointment_for_doctor(
        self, actor: Actor, appointment_id: str, *, purpose: str = "view"
    ) -> tuple[VideoAppointment, Patient]:
        async with self.db.transaction() as s:
            appt = await self._own(s, actor, appointment_id)
            patient = await s.get(Patient, appt.patient_id)
            assert patient is not None
            await self.audit.record(
                s,
                actor,
                "video.read",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
                details={"purpose": purpose},
            )
            return appt, patient

    async def todays(
        self, actor: Actor, *, audit: bool = True
    ) -> Sequence[tuple[VideoAppointment, Patient]]:
        now = self.clock.now()
        day = now.astimezone(LUXEMBOURG).date()
        start = to_utc(datetime.combine(day, datetime.min.time(), LUXEMBOURG))
        async with self.db.transaction() as s:
            rows = (
                await s.execute(
                    select(VideoAppointment, Patient)
                    .join(Patient, Patient.id == VideoAppointment.patient_id)
                    .where(
                        VideoAppointment.practitioner_account_id == actor.id,
                        VideoAppointment.starts_at >= start,
                        VideoAppointment.starts_at < start + timedelta(days=1),
                    )
                    .order_by(VideoAppointment.starts_at)
                )
            ).all()
            out = [(a, p) for a, p in rows]
            if audit:
                for a, _p in out:
                    await self.audit.record(
                        s, actor, "video.list", patient_id=a.patient_id, resource=f"video/{a.id}"
                    )
            return out

    async def do_cancel(self, actor: Actor, appointment_id: str) -> None:
        async with self.db.transaction() as s:
            appt = await self._own(s, actor, appointment_id)
            if appt.status not in ACTIVE:
                raise Conflict("this appointment can no longer be cancelled")
            appt.status = "cancelled"
            for inv in await self._invitations(s, appt.id):
                inv.revoked_at = inv.revoked_at or self.clock.now()
            await self.audit.record(
                s, actor, "video.cancel", patient_id=appt.patient_id, resource=f"video/{appt.id}"
            )

    async def do_reschedule(self, actor: Actor, appointment_id: str, raw: str) -> None:
        errors: dict[str, str] = {}
        starts = parse_local_datetime(raw, "starts_at", errors)
        if starts is not None and starts < self.clock.now() - timedelta(minutes=5):
            errors["starts_at"] = "is in the past"
        if errors or starts is None:
            raise ValidationError("the new time is not valid", fields=errors)
        async with self.db.transaction() as s:
            appt = await self._own(s, actor, appointment_id)
            if appt.status != "scheduled":
                raise Conflict("only a scheduled appointment can be moved")
            appt.starts_at = starts
            for inv in await self._invitations(s, appt.id):
                if inv.revoked_at is None:
                    inv.expires_at = starts + timedelta(hours=self.cfg.link_valid_hours)
            await self.audit.record(
                s,
                actor,
                "video.reschedule",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
            )

    async def _invitations(self, s: AsyncSession, appointment_id: str) -> list[VideoInvitation]:
        return list(
            (
                await s.execute(
                    select(VideoInvitation).where(VideoInvitation.appointment_id == appointment_id)
                )
            ).scalars()
        )

    # ------------------------------------------------------------------ invitations

    async def do_invite(self, actor: Actor, appointment_id: str) -> Invitation:
        """A fresh link; any earlier unused link of the appointment stops working."""
        now = self.clock.now()
        async with self.db.transaction() as s:
            appt = await self._own(s, actor, appointment_id)
            if appt.status not in ACTIVE:
                raise Conflict("this appointment is closed")
            for inv in await self._invitations(s, appt.id):
                if inv.used_at is not None:
                    raise Conflict("the patient has already entered with the current link")
                inv.revoked_at = inv.revoked_at or now
            expires = max(now, to_utc(appt.starts_at)) + timedelta(hours=self.cfg.link_valid_hours)
            token = make_invitation_token(self.secret_key, appt.id, expires)
            s.add(
                VideoInvitation(
                    appointment_id=appt.id,
                    token_hash=sha256_hex(token),
                    expires_at=expires,
                    created_at=now,
                )
            )
            await self.audit.record(
                s, actor, "video.invite", patient_id=appt.patient_id, resource=f"video/{appt.id}"
            )
            return Invitation(token, expires)

    async def _check_link(
        self, s: AsyncSession, token: str, ip: str | None
    ) -> tuple[VideoInvitation, VideoAppointment]:
        claims = read_invitation_token(self.secret_key, token)
        inv = None
        if claims is not None:
            inv = (
                await s.execute(
                    select(VideoInvitation).where(VideoInvitation.token_hash == sha256_hex(token))
                )
            ).scalar_one_or_none()
        if claims is None or inv is None or inv.appointment_id != claims.appointment_id:
            raise NotFound("this invitation link is not valid: check it or ask for a new one")
        appt = await s.get(VideoAppointment, inv.appointment_id)
        assert appt is not None
        refused = None
        if inv.revoked_at is not None or appt.status == "cancelled":
            refused = "this invitation was withdrawn: ask your doctor for a new one"
        elif to_utc(inv.expires_at) <= self.clock.now():
            refused = "this invitation link has expired: ask your doctor for a new one"
        elif inv.used_at is not None:
            refused = "this invitation link has already been used on another device"
        if refused:
            await self.audit.record(
                s,
                Actor("anonymous", ip),
                "video.link",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
                outcome="denied",
                details={"reason": refused},
            )
            raise Forbidden(refused)
        return inv, appt

    async def check_link(self, token: str, ip: str | None) -> VideoAppointment:
        async with self.db.transaction() as s:
            _inv, appt = await self._check_link(s, token, ip)
            await self.audit.record(
                s,
                Actor("anonymous", ip),
                "video.link",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
            )
            return appt

    async def do_enter(
        self, token: str, form: Mapping[str, str], ip: str | None, *, check_start: bool = False
    ) -> tuple[GuestPrincipal, str]:
        """Identity check and consent; returns the guest and its cookie secret (once). The
        patient is then in the waiting room (the check runs there, the doctor sees them come).
        ``check_start``: the pre-call check starts with the entry (audited with it)."""
        consent = form.get("consent") == "yes"
        async with self.db.transaction() as s:
            inv, appt = await self._check_link(s, token, ip)
            patient = await s.get(Patient, appt.patient_id)
            assert patient is not None
            errors: dict[str, str] = {}
            how = ""
            raw_birth = form.get("birth_date", "").strip()
            raw_mat = form.get("matricule", "").replace(" ", "")
            if raw_birth:
                how = "birth_date"
                try:
                    ok = date.fromisoformat(raw_birth) == patient.birth_date
                except ValueError:
                    ok = False
            elif raw_mat:
                how = "matricule"
                try:
                    ok = check_matricule(raw_mat) == patient.matricule
                except ValidationError:
                    ok = False
            else:
                ok = False
                errors["birth_date"] = "enter your date of birth or your matricule"
            if not ok and not errors:
                errors["birth_date"] = "does not match our records"
            if not consent:
                errors["consent"] = "consent is needed for a teleconsultation"
            if errors:
                await self.audit.record(
                    s,
                    Actor("anonymous", ip),
                    "video.enter",
                    patient_id=appt.patient_id,
                    resource=f"video/{appt.id}",
                    outcome="failure",
                    details={"identified_by": how, "consent": consent},
                )
                # commit the failure's audit row, then report
                failed = ValidationError("we could not confirm your identity", fields=errors)
            else:
                failed = None
                now = self.clock.now()
                secret = new_guest_secret()
                inv.used_at = now
                inv.guest_hash = sha256_hex(secret)
                s.add(
                    VideoConsent(
                        appointment_id=appt.id,
                        patient_id=appt.patient_id,
                        identified_by=how,
                        consent_text_version=CONSENT_VERSION,
                        consented_at=now,
                    )
                )
                guest = GuestPrincipal(inv.id, appt.id, appt.patient_id)
                await self.audit.record(
                    s,
                    guest.actor(ip),
                    "video.consent",
                    patient_id=appt.patient_id,
                    resource=f"video/{appt.id}",
                    details={"identified_by": how, "version": CONSENT_VERSION},
                )
                if appt.status == "scheduled":
                    appt.status = "waiting"
                    appt.waiting_since = now
                    await self.audit.record(
                        s,
                        guest.actor(ip),
                        "video.wait",
                        patient_id=appt.patient_id,
                        resource=f"video/{appt.id}",
                    )
                if check_start:
                    await self.audit.record(
                        s,
                        guest.actor(ip),
                        "video.check.start",
                        patient_id=appt.patient_id,
                        resource=f"video/{appt.id}",
                    )
        if failed is not None:
            raise failed
        return guest, secret

    async def guest_for(self, secret: str | None) -> GuestPrincipal | None:
        """The guest a cookie stands for, while its invitation is valid."""
        if not secret or len(secret) > 100:
            return None
        async with self.db.session() as s:
            inv = (
                await s.execute(
                    select(VideoInvitation).where(VideoInvitation.guest_hash == sha256_hex(secret))
                )
            ).scalar_one_or_none()
            if inv is None or inv.revoked_at is not None:
                return None
            if to_utc(inv.expires_at) <= self.clock.now():
                return None
            appt = await s.get(VideoAppointment, inv.appointment_id)
            assert appt is not None
            return GuestPrincipal(inv.id, appt.id, appt.patient_id)

    # ------------------------------------------------------------------ parties

    async def party(
        self,
        appointment_id: str,
        *,
        account_id: str | None,
        guest: GuestPrincipal | None,
        ip: str | None,
        action: str,
    ) -> tuple[Party, VideoAppointment]:
        """Authorise one of the appointment's two parties (audited either way)."""
        async with self.db.transaction() as s:
            party, appt = await self._authorise(s, appointment_id, account_id, guest, ip, action)
        if party is None:  # refused after the refusal's audit row was committed
            raise Forbidden("you are not a party to this teleconsultation")
        return party, appt

    async def _authorise(
        self,
        s: AsyncSession,
        appointment_id: str,
        account_id: str | None,
        guest: GuestPrincipal | None,
        ip: str | None,
        action: str | None,
    ) -> tuple[Party | None, VideoAppointment]:
        """The party, or None for anyone else (audited ``denied``: the caller commits, then
        refuses). ``action`` None: the caller audits what the party did."""
        appt = await s.get(VideoAppointment, appointment_id)
        if appt is None:
            raise NotFound("no such appointment")
        party = None
        if account_id is not None and appt.practitioner_account_id == account_id:
            party = Party("doctor", Actor(account_id, ip))
        elif guest is not None and guest.appointment_id == appt.id:
            party = Party("patient", guest.actor(ip))
        if party is None:
            who = account_id or (guest.actor(ip).id if guest else "anonymous")
            await self.audit.record(
                s,
                Actor(who, ip),
                action or "video.check",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
                outcome="denied",
            )
            return None, appt
        if action is not None:
            await self.audit.record(
                s, party.actor, action, patient_id=appt.patient_id, resource=f"video/{appt.id}"
            )
        return party, appt

    async def get(self, appointment_id: str) -> VideoAppointment:
        async with self.db.session() as s:
            appt = await s.get(VideoAppointment, appointment_id)
            if appt is None:
                raise NotFound("no such appointment")
            return appt

    # ------------------------------------------------------------------ waiting room

    async def do_record_check(
        self,
        appointment_id: str,
        result: Mapping[str, Any],
        *,
        account_id: str | None,
        guest: GuestPrincipal | None,
        ip: str | None,
    ) -> tuple[dict[str, Any], str]:
        """The patient's pre-call check result (and the practitioner to tell), authorised, recorded and audited in one
        transaction. ``final: false``: camera, microphone and round trip are known, the frame
        rate is still being measured (``connection`` is then ``measuring``)."""
        clean: dict[str, Any] = {
            "camera": bool(result.get("camera")),
            "microphone": bool(result.get("microphone")),
            "rtt_ms": _num(result.get("rtt_ms")),
            "fps": _num(result.get("fps")),
        }
        rtt, fps = clean["rtt_ms"], clean["fps"]
        if result.get("final") is False and fps is None:
            clean["connection"] = "measuring"
        else:
            clean["connection"] = (
                "good"
                if rtt is not None and rtt < 300 and fps is not None and fps >= 10
                else "weak"
            )
        async with self.db.transaction() as s:
            party, appt = await self._authorise(s, appointment_id, account_id, guest, ip, None)
            if party is not None:
                mine = party.role == "patient"
                if mine:
                    appt.check_result = json.dumps(clean)
                await self.audit.record(
                    s,
                    party.actor,
                    "video.check",
                    patient_id=appt.patient_id,
                    resource=f"video/{appt.id}",
                    outcome="success" if mine else "denied",
                    details=clean if mine else None,
                )
        if party is None:
            raise Forbidden("you are not a party to this teleconsultation")
        if party.role != "patient":
            raise Forbidden("the connection test is the patient's")
        return clean, appt.practitioner_account_id

    async def do_check_timed_out(self, appointment_id: str) -> VideoAppointment | None:
        """The server closed a pre-call check that did not finish in time: recorded (the
        doctor's waiting room says so), audited as a failed check."""
        result = {
            "camera": False,
            "microphone": False,
            "rtt_ms": None,
            "fps": None,
            "connection": "weak",
            "timed_out": True,
        }
        async with self.db.transaction() as s:
            appt = await s.get(VideoAppointment, appointment_id)
            if appt is None:
                return None
            appt.check_result = json.dumps(result)
            await self.audit.record(
                s,
                SYSTEM,
                "video.check",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
                outcome="failure",
                details={"timed_out": True},
            )
            return appt

    async def _move(
        self, party: Party, appointment_id: str, src: str, dst: str, stamp: str, action: str
    ) -> VideoAppointment:
        """``src`` → ``dst`` (time in ``stamp``, audited as ``action``); otherwise unchanged."""
        async with self.db.transaction() as s:
            appt = await s.get(VideoAppointment, appointment_id)
            assert appt is not None
            if appt.status == src:
                appt.status = dst
                setattr(appt, stamp, self.clock.now())
                await self.audit.record(
                    s,
                    party.actor,
                    action,
                    patient_id=appt.patient_id,
                    resource=f"video/{appt.id}",
                )
            return appt

    async def do_set_waiting(self, party: Party, appointment_id: str) -> VideoAppointment:
        return await self._move(
            party, appointment_id, "scheduled", "waiting", "waiting_since", "video.wait"
        )

    async def do_admit(self, actor: Actor, appointment_id: str, admit: bool) -> VideoAppointment:
        async with self.db.transaction() as s:
            appt = await self._own(s, actor, appointment_id)
            if appt.status not in ACTIVE:
                raise Conflict("this appointment is closed")
            if admit:
                appt.status = "admitted"
                appt.admitted_at = self.clock.now()
            # postponing keeps the patient in the waiting room; they are told to wait
            await self.audit.record(
                s,
                actor,
                "video.admit" if admit else "video.postpone",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
            )
            return appt

    async def do_end(self, party: Party, appointment_id: str) -> None:
        await self._move(party, appointment_id, "admitted", "ended", "ended_at", "video.hangup")

    async def waiting(self, account_id: str) -> list[dict[str, Any]]:
        """The practitioner's patients in the waiting room or admitted (no audit: a push feed of
        names already shown on the audited dashboard)."""
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(VideoAppointment, Patient)
                    .join(Patient, Patient.id == VideoAppointment.patient_id)
                    .where(
                        VideoAppointment.practitioner_account_id == account_id,
                        VideoAppointment.status.in_(("waiting", "admitted")),
                    )
                    .order_by(VideoAppointment.waiting_since)
                )
            ).all()
        return [
            {
                "id": a.id,
                "name": p.full_name,
                "status": a.status,
                "check": json.loads(a.check_result) if a.check_result else None,
            }
            for a, p in rows
        ]

    # ------------------------------------------------------------------ chat and files

    async def do_chat(self, party: Party, appointment_id: str, text: str) -> dict[str, Any]:
        body = text.strip()
        if not body:
            raise ValidationError("empty message", fields={"text": "required"})
        if len(body) > 4000:
            raise ValidationError("message too long", fields={"text": "at most 4000 characters"})
        async with self.db.transaction() as s:
            appt = await s.get(VideoAppointment, appointment_id)
            assert appt is not None
            msg = VideoMessage(
                appointment_id=appt.id, sender=party.role, body=body, sent_at=self.clock.now()
            )
            s.add(msg)
            await s.flush()
            await self.audit.record(
                s,
                party.actor,
                "video.chat",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}/message/{msg.id}",
            )
            return _msg_json(msg)

    async def messages(self, appointment_id: str) -> list[dict[str, Any]]:
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(VideoMessage)
                    .where(VideoMessage.appointment_id == appointment_id)
                    .order_by(VideoMessage.sent_at, VideoMessage.id)
                )
            ).scalars()
            return [_msg_json(m) for m in rows]

    def check_file(self, filename: str, content_type: str, data: bytes) -> tuple[str, str]:
        if len(data) > self.cfg.max_upload_bytes:
            raise TooLarge(files_limited(self.cfg.max_upload_bytes))
        if not data:
            raise ValidationError("the file is empty", fields={"file": "empty"})
        ctype = content_type.split(";")[0].strip().lower()
        if ctype not in ALLOWED_TYPES:
            raise ValidationError(
                "only PDF, PNG, JPEG and plain-text files can be sent",
                fields={"file": "type not allowed"},
            )
        magics = ALLOWED_TYPES[ctype]
        if magics and not any(data.startswith(m) for m in magics):
            raise ValidationError(
                "the file's content does not match its type", fields={"file": "wrong content"}
            )
        name = SAFE_NAME.sub("_", filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1])[:200]
        return name or "file", ctype

    async def do_upload(
        self, party: Party, appointment_id: str, filename: str, content_type: str, data: bytes
    ) -> dict[str, Any]:
        name, ctype = self.check_file(filename, content_type, data)
        sealed = self.sealer.seal(data)
        async with self.db.transaction() as s:
            appt = await s.get(VideoAppointment, appointment_id)
            assert appt is not None
            f = VideoFile(
                appointment_id=appt.id,
                sender=party.role,
                filename=name,
                content_type=ctype,
                size=len(data),
                sealed=sealed,
                uploaded_at=self.clock.now(),
            )
            s.add(f)
            await s.flush()
            await self.audit.record(
                s,
                party.actor,
                "video.file.upload",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}/file/{f.id}",
                details={"size": len(data)},
            )
            return _file_json(f)

    async def files(self, appointment_id: str) -> list[dict[str, Any]]:
        async with self.db.session() as s:
            rows = (
                await s.execute(
                    select(VideoFile)
                    .where(VideoFile.appointment_id == appointment_id)
                    .order_by(VideoFile.uploaded_at, VideoFile.id)
                )
            ).scalars()
            return [_file_json(f) for f in rows]

    async def do_download(
        self, party: Party, appointment_id: str, file_id: str
    ) -> tuple[str, str, bytes]:
        async with self.db.transaction() as s:
            f = await s.get(VideoFile, file_id)
            if f is None or f.appointment_id != appointment_id:
                raise NotFound("no such file")
            appt = await s.get(VideoAppointment, appointment_id)
            assert appt is not None
            await self.audit.record(
                s,
                party.actor,
                "video.file.download",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}/file/{f.id}",
            )
            return f.filename, f.content_type, self.sealer.open(f.sealed)

    # ------------------------------------------------------------------ after the call

    async def _issue_context(
        self, s: AsyncSession, appt: VideoAppointment, actor: Actor, now: datetime
    ) -> IssueContext:
        consented = (
            await s.execute(
                select(VideoConsent.id).where(VideoConsent.appointment_id == appt.id).limit(1)
            )
        ).first() is not None
        return IssueContext(
            appt.id,
            appt.patient_id,
            actor.id,
            now,
            start=to_utc(appt.admitted_at or appt.starts_at),
            end=to_utc(appt.ended_at or now),
            patient_consent=consented,
        )

    async def _issued_already(self, s: AsyncSession, appointment_id: str) -> bool:
        return (
            await s.execute(
                select(VideoDocument.id).where(VideoDocument.appointment_id == appointment_id)
            )
        ).first() is not None

    async def do_after_call(
        self, actor: Actor, appointment_id: str, form: Mapping[str, str]
    ) -> list[str]:
        issuer = self.issuer
        now = self.clock.now()
        # 1. Build, validate and render the documents with reads only: the PDFs are not drawn
        #    under the writer's lock, and a refusal (ValidationError) writes nothing.
        prepared: list[Prepared] = []
        async with self.db.session() as s:
            appt = await s.get(VideoAppointment, appointment_id)
            if (
                appt is not None
                and appt.practitioner_account_id == actor.id
                and appt.status in ("admitted", "ended")
                and issuer is not None
                and not await self._issued_already(s, appt.id)
            ):
                docs = check_after_call(form, to_utc(appt.starts_at).astimezone(LUXEMBOURG).date())
                ctx = await self._issue_context(s, appt, actor, now)
                prepared.append(await issuer.prepare_report(s, ctx, docs.report))
                if docs.sick_leave is not None:
                    prepared.append(await issuer.prepare_sick_leave(s, ctx, docs.sick_leave))
                if docs.prescription is not None:
                    prepared.append(await issuer.prepare_prescription(s, ctx, docs.prescription))
        # 2. One transaction: the checks again (another request may have come first), the end
        #    of the consultation, the signed documents, their messages and the patient's copies.
        async with self.db.transaction() as s:
            appt = await self._own(s, actor, appointment_id)
            if appt.status not in ("admitted", "ended"):
                raise Conflict("documents are written after the consultation")
            if await self._issued_already(s, appt.id):
                raise Conflict("the documents of this consultation have already been issued")
            if issuer is None:
                raise Conflict("no document pipeline is configured (the workflow feature)")
            if not prepared:
                raise Conflict("the consultation changed meanwhile: submit the form again")
            ctx = await self._issue_context(s, appt, actor, now)
            if appt.status == "admitted":
                appt.status = "ended"
                appt.ended_at = now
            issued = [(p.kind, await issuer.store(s, ctx, p)) for p in prepared]
            for kind, doc in issued:
                s.add(
                    VideoDocument(
                        appointment_id=appt.id,
                        patient_id=appt.patient_id,
                        kind=kind,
                        document_id=doc.document_id,
                        title=doc.title,
                        pdf=self.sealer.seal(doc.pdf),
                        created_at=now,
                    )
                )
            await self.audit.record(
                s,
                actor,
                "video.documents",
                patient_id=appt.patient_id,
                resource=f"video/{appt.id}",
                details={k: any(kind == k for kind, _d in issued) for k in DOCUMENT_KINDS},
            )
        issuer.wake()
        return [doc.document_id for _kind, doc in issued]

    async def _current(self, s: AsyncSession, rows: Sequence[VideoDocument]) -> dict[str, Current]:
        """Where each issued document stands now: the doctor may have corrected it (the
        newest version replaces it) or withdrawn it (entered in error) since the call."""
        versions = (
            await self.issuer.versions(s, [r.document_id for r in rows]) if self.issuer else {}
        )
        out = {}
        for r in rows:
            newest_id, status = versions.get(r.document_id, (r.document_id, "final"))
            state: Literal["issued", "corrected", "withdrawn"]
            if status == "entered-in-error":
                state = "withdrawn"
            elif newest_id != r.document_id:
                state = "corrected"
            else:
                state = "issued"
            out[r.id] = Current(newest_id, state)
        return out

    async def documents(self, appointment_id: str) -> list[dict[str, Any]]:
        """The documents issued after the call, each as it stands now (``state`` issued,
        corrected or withdrawn) with the delivery (target, status) of its newest version."""
        async with self.db.session() as s:
            rows = (
                (
                    await s.execute(
                        select(VideoDocument)
                        .where(VideoDocument.appointment_id == appointment_id)
                        .order_by(VideoDocument.created_at, VideoDocument.kind)
                    )
                )
                .scalars()
                .all()
            )
            current = await self._current(s, rows)
            newest = [c.document_id for c in current.values()]
            delivery = await self.issuer.delivery(s, newest) if self.issuer else {}
            return [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "title": r.title,
                    "document_id": current[r.id].document_id,
                    "state": current[r.id].state,
                    "delivery": delivery.get(current[r.id].document_id, []),
                }
                for r in rows
            ]

    async def do_document_pdf(
        self, party: Party, appointment_id: str, document_id: str
    ) -> tuple[str, bytes]:
        """The printable copy of an issued document (file name, PDF bytes), audited: the copy
        made after the call, or the corrected version's if the doctor corrected it since; a
        withdrawn document is not given out (refusal audited)."""
        async with self.db.session() as s:
            doc = await s.get(VideoDocument, document_id)
            if doc is None or doc.appointment_id != appointment_id:
                raise NotFound("no such document")
            current = (await self._current(s, [doc]))[doc.id]
            newer = None
            if current.state == "corrected" and self.issuer is not None:
                newer = await self.issuer.stored_version(s, current.document_id)
        # rendered after the session: no pooled connection held while the PDF is drawn
        pdf = await self.issuer.patient_copy(*newer) if newer and self.issuer else None
        withdrawn = current.state == "withdrawn"
        async with self.db.transaction() as s:
            await self.audit.record(
                s,
                party.actor,
                "video.document.download",
                patient_id=doc.patient_id,
                resource=f"video/{appointment_id}/document/{doc.id}",
                outcome="denied" if withdrawn else "success",
                details={"kind": doc.kind, "state": current.state},
            )
        if withdrawn:
            raise Conflict(
                "your doctor withdrew this document: it was issued by mistake",
                fields={"state": "withdrawn"},
            )
        name = f"{doc.kind.replace('_', '-')}-{doc.id[:8]}.pdf"
        return name, pdf if pdf is not None else self.sealer.open(doc.pdf)


@dataclass(frozen=True)
class Current:
    document_id: str  # the newest version of the issued document's set
    state: Literal["issued", "corrected", "withdrawn"]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return round(float(v), 1)


def _msg_json(m: VideoMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "sender": m.sender,
        "text": m.body,
        "at": to_utc(m.sent_at).isoformat(),
    }


def _file_json(f: VideoFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "sender": f.sender,
        "name": f.filename,
        "type": f.content_type,
        "size": f.size,
        "at": to_utc(f.uploaded_at).isoformat(),
    }
