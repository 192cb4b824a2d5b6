"""Identity domain: check_* validates, do_* changes; every read or change of a patient is audited."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from konsil.audit.service import Actor, AuditEntry, AuditLog
from konsil.auth.passwords import PasswordHasher, check_password_strength
from konsil.clock import Clock
from konsil.db import Database
from konsil.errors import Conflict, Forbidden, NotFound, ValidationError
from konsil.identity.matricule import check_matricule
from konsil.identity.models import (
    EXTERNAL,
    RESERVED_USERNAMES,
    ROLES,
    SERVICE,
    Account,
    Organisation,
    Patient,
    Practitioner,
)
from konsil.identity.specialties import PROFESSIONS, is_specialty

USERNAME_RE = re.compile(r"^[a-z0-9._=\-/]{1,64}$")  # Matrix user id localpart grammar
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ORG_KINDS = ("hospital", "practice", "lab", "pharmacy", "other")


@dataclass(frozen=True)
class NewPatient:
    matricule: str
    given_name: str
    family_name: str
    birth_date: date
    sex: str = "U"
    email: str | None = None
    phone: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class PractitionerUpdate:
    display_name: str
    role: str
    profession: str = "physician"
    specialty: str | None = None
    organisation_id: str | None = None
    email: str | None = None
    cns_provider_code: str | None = None


@dataclass(frozen=True)
class NewAccount:
    username: str
    password: str
    role: str
    display_name: str | None = None
    specialty: str | None = None
    profession: str = "physician"
    organisation_id: str | None = None
    email: str | None = None
    cns_provider_code: str | None = None


def _name(value: str, field: str, errors: dict[str, str]) -> str:
    v = " ".join(value.split())
    if not v:
        errors[field] = "required"
    elif len(v) > 100:
        errors[field] = "at most 100 characters"
    return v


def check_new_patient(p: NewPatient, today: date) -> NewPatient:
    errors: dict[str, str] = {}
    matricule = p.matricule
    try:
        matricule = check_matricule(p.matricule, birth_date=p.birth_date, today=today)
    except ValidationError as exc:
        errors.update(exc.fields)
    given = _name(p.given_name, "given_name", errors)
    family = _name(p.family_name, "family_name", errors)
    if p.birth_date > today:
        errors["birth_date"] = "is in the future"
    if p.sex not in ("F", "M", "U"):
        errors["sex"] = "must be F, M or U"
    if p.email and not EMAIL_RE.match(p.email):
        errors["email"] = "is not an e-mail address"
    if errors:
        raise ValidationError("the patient record is not valid", fields=errors)
    return NewPatient(
        matricule,
        given,
        family,
        p.birth_date,
        p.sex,
        p.email or None,
        p.phone or None,
        p.address or None,
    )


def check_new_account(a: NewAccount) -> None:
    errors: dict[str, str] = {}
    if not USERNAME_RE.match(a.username):
        errors["username"] = "lower-case letters, digits and . _ = - / only (max 64)"
    elif a.username in RESERVED_USERNAMES:
        errors["username"] = "this user name is reserved for Konsil's own service account"
    if a.role not in ROLES:
        errors["role"] = f"must be one of {', '.join(ROLES)}"
    reason = check_password_strength(a.password)
    if reason:
        errors["password"] = reason
    if a.specialty is not None and not is_specialty(a.specialty):
        errors["specialty"] = "unknown specialty code"
    if a.profession not in PROFESSIONS:
        errors["profession"] = "unknown profession"
    if a.email and not EMAIL_RE.match(a.email):
        errors["email"] = "is not an e-mail address"
    if errors:
        raise ValidationError("the account is not valid", fields=errors)


def _refuse_service_account(account: Account) -> None:
    """Konsil's own service account has no password and no clinical role: nobody edits it,
    gives it a password (it would let a person act as Konsil) or switches it off."""
    if account.role == SERVICE:
        raise Forbidden("Konsil's service account is managed by Konsil itself")


async def add_account(
    session: AsyncSession,
    audit: AuditLog,
    actor: Actor,
    new: NewAccount,
    password_hash: str,
    now: datetime,
) -> Account:
    """Insert an already checked account (and its practitioner record) and audit it, inside the
    caller's transaction. A taken username raises IntegrityError at the flush. Accounts of role
    ``external`` are guests: no practitioner record, no directory entry, no room creation."""
    display = (new.display_name or new.username).strip()
    practitioner_id = None
    if new.role in ("practitioner", "coordinator"):
        given, _, family = display.partition(" ")
        pr = Practitioner(
            given_name=given or display,
            family_name=family or display,
            profession=new.profession if new.role == "practitioner" else "coordinator",
            specialty=new.specialty,
            cns_provider_code=new.cns_provider_code,
            organisation_id=new.organisation_id,
            email=new.email,
            created_at=now,
        )
        session.add(pr)
        await session.flush()
        practitioner_id = pr.id
    account = Account(
        username=new.username,
        password_hash=password_hash,
        role=new.role,
        display_name=display,
        practitioner_id=practitioner_id,
        organisation_id=new.organisation_id,
        is_active=True,
        is_guest=new.role == EXTERNAL,
        failed_logins=0,
        created_at=now,
    )
    session.add(account)
    await session.flush()
    await audit.record(
        session,
        actor,
        "account.create",
        resource=f"account/{account.id}",
        details={"role": new.role},
    )
    return account


async def add_patient(
    session: AsyncSession, audit: AuditLog, actor: Actor, clean: NewPatient, now: datetime
) -> Patient:
    """Insert an already checked patient and audit it, inside the caller's transaction
    (so a feature can register a patient atomically with its own rows)."""
    patient = Patient(
        matricule=clean.matricule,
        given_name=clean.given_name,
        family_name=clean.family_name,
        birth_date=clean.birth_date,
        sex=clean.sex,
        email=clean.email,
        phone=clean.phone,
        address=clean.address,
        created_at=now,
    )
    session.add(patient)
    await session.flush()
    await audit.record(
        session, actor, "patient.create", patient_id=patient.id, resource=f"patient/{patient.id}"
    )
    return patient


class IdentityService:
    def __init__(self, db: Database, clock: Clock, hasher: PasswordHasher, audit: AuditLog) -> None:
        self.db = db
        self.clock = clock
        self.hasher = hasher
        self.audit = audit

    # ------------------------------------------------------------------ organisations

    async def do_create_organisation(
        self, actor: Actor, name: str, kind: str, identifier: str | None = None
    ) -> Organisation:
        errors: dict[str, str] = {}
        name = " ".join(name.split())
        if not name or len(name) > 200:
            errors["name"] = "required, at most 200 characters"
        if kind not in ORG_KINDS:
            errors["kind"] = f"must be one of {', '.join(ORG_KINDS)}"
        if errors:
            raise ValidationError("the organisation is not valid", fields=errors)
        try:
            async with self.db.transaction() as s:
                org = Organisation(
                    name=name, kind=kind, identifier=identifier or None, created_at=self.clock.now()
                )
                s.add(org)
                await s.flush()
                await self.audit.record(
                    s, actor, "organisation.create", resource=f"organisation/{org.id}"
                )
        except IntegrityError:
            raise Conflict(
                f"an organisation named {name!r} exists already", fields={"name": "already exists"}
            ) from None
        return org

    async def organisations(self) -> Sequence[Organisation]:
        async with self.db.session() as s:
            return (
                (await s.execute(select(Organisation).order_by(Organisation.name))).scalars().all()
            )

    # ------------------------------------------------------------------ accounts

    async def do_create_account(self, actor: Actor, new: NewAccount) -> Account:
        check_new_account(new)
        pw_hash = await self.hasher.hash(new.password)
        try:
            async with self.db.transaction() as s:
                if new.organisation_id and await s.get(Organisation, new.organisation_id) is None:
                    raise ValidationError(
                        "unknown organisation", fields={"organisation_id": "unknown organisation"}
                    )
                account = await add_account(s, self.audit, actor, new, pw_hash, self.clock.now())
        except IntegrityError:
            raise Conflict(
                f"the username {new.username!r} is taken", fields={"username": "already taken"}
            ) from None
        return account

    async def accounts(self) -> Sequence[tuple[Account, Practitioner | None]]:
        async with self.db.session() as s:
            rows = await s.execute(
                select(Account, Practitioner)
                .outerjoin(Practitioner, Practitioner.id == Account.practitioner_id)
                .order_by(Account.username)
            )
            return [(a, p) for a, p in rows.all()]

    async def account_by_username(self, username: str) -> Account | None:
        async with self.db.session() as s:
            return (
                await s.execute(select(Account).where(Account.username == username))
            ).scalar_one_or_none()

    async def account_detail(self, account_id: str) -> tuple[Account, Practitioner | None]:
        async with self.db.session() as s:
            account = await s.get(Account, account_id)
            if account is None:
                raise NotFound("no such account")
            pr = (
                await s.get(Practitioner, account.practitioner_id)
                if account.practitioner_id
                else None
            )
            return account, pr

    async def do_update_practitioner(
        self, actor: Actor, account_id: str, upd: PractitionerUpdate
    ) -> None:
        errors: dict[str, str] = {}
        display = " ".join(upd.display_name.split())
        if not display or len(display) > 200:
            errors["display_name"] = "required, at most 200 characters"
        if upd.specialty is not None and not is_specialty(upd.specialty):
            errors["specialty"] = "unknown specialty code"
        if upd.profession not in PROFESSIONS:
            errors["profession"] = "unknown profession"
        if upd.email and not EMAIL_RE.match(upd.email):
            errors["email"] = "is not an e-mail address"
        if upd.role not in ROLES:
            errors["role"] = f"must be one of {', '.join(ROLES)}"
        if actor.id == account_id and upd.role != "admin":
            errors["role"] = "you cannot remove your own administrator role"
        async with self.db.transaction() as s:
            account = await s.get(Account, account_id, with_for_update=True)
            if account is None:
                raise NotFound("no such account")
            _refuse_service_account(account)
            if upd.organisation_id and await s.get(Organisation, upd.organisation_id) is None:
                errors["organisation_id"] = "unknown organisation"
            if errors:
                raise ValidationError("the account is not valid", fields=errors)
            account.display_name = display
            account.role = upd.role
            account.is_guest = upd.role == EXTERNAL
            account.organisation_id = upd.organisation_id
            pr = (
                await s.get(Practitioner, account.practitioner_id)
                if account.practitioner_id
                else None
            )
            if pr is None and upd.role in ("practitioner", "coordinator"):
                pr = Practitioner(
                    given_name=display,
                    family_name="",
                    profession=upd.profession,
                    created_at=self.clock.now(),
                )
                s.add(pr)
                await s.flush()
                account.practitioner_id = pr.id
            if pr is not None:
                given, _, family = display.partition(" ")
                pr.given_name, pr.family_name = given or display, family or display
                pr.profession = upd.profession
                pr.specialty = upd.specialty
                pr.organisation_id = upd.organisation_id
                pr.email = upd.email
                pr.cns_provider_code = upd.cns_provider_code
            await self.audit.record(s, actor, "account.update", resource=f"account/{account_id}")

    async def do_set_password(self, actor: Actor, username: str, password: str) -> None:
        """Set a new password and lift any lockout (operators' reset; sessions are ended)."""
        from konsil.auth.models import WebSession

        reason = check_password_strength(password)
        if reason:
            raise ValidationError("the password is not acceptable", fields={"password": reason})
        pw_hash = await self.hasher.hash(password)
        async with self.db.transaction() as s:
            account = (
                await s.execute(
                    select(Account).where(Account.username == username).with_for_update()
                )
            ).scalar_one_or_none()
            if account is None:
                raise NotFound(f"no account named {username!r}")
            _refuse_service_account(account)
            account.password_hash = pw_hash
            account.failed_logins = 0
            account.locked_until = None
            await s.execute(delete(WebSession).where(WebSession.account_id == account.id))
            await self.audit.record(
                s, actor, "account.password_reset", resource=f"account/{account.id}"
            )

    async def do_unlock(self, actor: Actor, username: str) -> None:
        async with self.db.transaction() as s:
            account = (
                await s.execute(
                    select(Account).where(Account.username == username).with_for_update()
                )
            ).scalar_one_or_none()
            if account is None:
                raise NotFound(f"no account named {username!r}")
            account.failed_logins = 0
            account.locked_until = None
            await self.audit.record(s, actor, "account.unlock", resource=f"account/{account.id}")

    async def do_set_active(self, actor: Actor, account_id: str, active: bool) -> None:
        if actor.id == account_id and not active:
            # An administrator locking themselves out could leave nobody able to administer.
            raise Forbidden("you cannot deactivate your own account")
        async with self.db.transaction() as s:
            account = await s.get(Account, account_id, with_for_update=True)
            if account is None:
                raise NotFound("no such account")
            _refuse_service_account(account)
            account.is_active = active
            await self.audit.record(
                s,
                actor,
                "account.activate" if active else "account.deactivate",
                resource=f"account/{account_id}",
            )

    # ------------------------------------------------------------------ patients

    async def do_create_patient(self, actor: Actor, new: NewPatient) -> Patient:
        clean = check_new_patient(new, self.clock.now().date())
        try:
            async with self.db.transaction() as s:
                patient = await add_patient(s, self.audit, actor, clean, self.clock.now())
        except IntegrityError:
            raise Conflict(
                "a patient with this matricule exists already",
                fields={"matricule": "already registered"},
            ) from None
        return patient

    async def get_patient(self, actor: Actor, patient_id: str, *, purpose: str = "view") -> Patient:
        async with self.db.transaction() as s:
            patient = await s.get(Patient, patient_id)
            if patient is None:
                raise NotFound("no such patient")
            await self.audit.record(
                s,
                actor,
                "patient.read",
                patient_id=patient.id,
                resource=f"patient/{patient.id}",
                details={"purpose": purpose},
            )
            return patient

    async def patient_by_matricule(self, session: AsyncSession, matricule: str) -> Patient | None:
        return (
            await session.execute(select(Patient).where(Patient.matricule == matricule))
        ).scalar_one_or_none()

    async def search_patients(
        self, actor: Actor, query: str, *, limit: int = 50
    ) -> Sequence[Patient]:
        q = " ".join(query.split())
        async with self.db.transaction() as s:
            stmt = select(Patient).order_by(Patient.family_name, Patient.given_name).limit(limit)
            if q:
                like = f"%{q.lower()}%"
                stmt = stmt.where(
                    or_(
                        func.lower(Patient.family_name).like(like),
                        func.lower(Patient.given_name).like(like),
                        Patient.matricule == q.replace(" ", ""),
                    )
                )
            patients = (await s.execute(stmt)).scalars().all()
            # A listing shows patient data: each patient shown is an audited read.
            await self.audit.record_many(
                s,
                actor,
                [
                    AuditEntry("patient.list", patient_id=p.id, resource=f"patient/{p.id}")
                    for p in patients
                ],
            )
            return patients
