"""Input values for clinical documents and their checks.

Every builder first runs its ``check_*``: all problems are collected and raised together as one
``ValidationError`` whose ``fields`` map a dotted field name to what is wrong, so a form can show
every mistake at once and nothing half-valid is ever built, signed or stored.

What is wrong is a ``Reason``: a fixed English template and the values it names (``"{code!r} is
not an ICD-10 code (e.g. J06.9)"``, ``code=…``), so the pages translate each template once
(``workflow.web.i18n``) while the JSON API answers the same English text as ever. A reason is
always a literal template, never an f-string: a test lists them all and checks each has French.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Final
from zoneinfo import ZoneInfo

from konsil.errors import Reason, ValidationError
from konsil.identity.matricule import check_matricule
from konsil.identity.specialties import BY_CODE as SPECIALTIES

from . import codes

LUXEMBOURG: Final = ZoneInfo("Europe/Luxembourg")
OID_RE: Final = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
ICD10_RE: Final = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
CNS_PROVIDER_RE: Final = re.compile(r"^[0-9]{6}-?[0-9]{2}$")  # 90812100 or 908121-00
POSTAL_CODE_RE: Final = re.compile(r"^(L-)?[0-9]{4,5}$|^[A-Z0-9 -]{3,10}$")
COUNTRY_RE: Final = re.compile(r"^[A-Z]{2}$")
MAX_TEXT: Final = 4000
# C0 control characters other than tab and line feed (a text field never holds them)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f]")


class Problems:
    """Collects field problems; ``raise_if_any`` turns them into one ValidationError."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def add(self, name: str, reason: str, **params: str | int) -> None:
        """``reason`` is a literal English template, ``params`` the values it names."""
        self.fields.setdefault(name, Reason(reason, **params))

    def text(self, value: str, name: str, *, required: bool = True, limit: int = MAX_TEXT) -> None:
        if not value.strip():
            if required:
                self.add(name, "is required")
        elif len(value) > limit:
            self.add(name, "is longer than {limit} characters", limit=limit)
        elif _CONTROL.search(value):
            self.add(name, "contains control characters")

    def matricule(self, value: str, name: str, *, today: date | None = None) -> None:
        try:
            check_matricule(value, today=today)
        except ValidationError as exc:  # konsil.identity.matricule's fixed messages
            self.fields.setdefault(name, exc.message)

    def raise_if_any(self, what: str) -> None:
        """``what``: the document, e.g. ``the prescription`` (a literal, translated too)."""
        if self.fields:
            raise refusal(Reason(what), self.fields)


def refusal(what: Reason, fields: Mapping[str, str]) -> ValidationError:
    """The builders' one refusal: ``what`` is not valid, then every problem by field name (a
    page lists the fields on their own, so its translation may leave ``{problems}`` out)."""
    listed = "; ".join(f"{k}: {v}" for k, v in fields.items())
    message = Reason("{what} is not valid — {problems}", what=what, problems=listed)
    return ValidationError(message, fields=fields)


def renamed(exc: ValidationError, rename: Callable[[str], str]) -> ValidationError:
    """A builder's refusal with its fields renamed (the builder's names → a form's), its message
    listing the new names."""
    fields = {rename(k): v for k, v in exc.fields.items()}
    what = exc.message.params.get("what") if isinstance(exc.message, Reason) else None
    if fields == exc.fields or not isinstance(what, Reason):
        return ValidationError(exc.message, fields=fields)
    return refusal(what, fields)


@dataclass(frozen=True)
class Identifier:
    """An HL7 II: an OID ``root`` and an optional ``extension`` unique within it."""

    root: str
    extension: str | None = None

    def __str__(self) -> str:
        return f"{self.root}^{self.extension}" if self.extension else self.root


def new_document_id() -> Identifier:
    """A fresh UUID-based OID (``2.25.<uuid as integer>``), unique without a registry."""
    return Identifier(f"2.25.{uuid.uuid4().int}")


@dataclass(frozen=True)
class Address:
    street: str  # street and house number
    postal_code: str
    city: str
    country: str = "LU"  # ISO 3166-1 alpha-2


@dataclass(frozen=True)
class Patient:
    matricule: str
    given_name: str
    family_name: str
    birth_date: date
    sex: str  # F, M or UN (codes.ADMIN_GENDER)
    address: Address | None = None


@dataclass(frozen=True)
class Practitioner:
    id: Identifier
    given_name: str
    family_name: str
    specialty: str  # a konsil.identity.specialties code
    cns_code: str | None = None  # CNS provider code, 8 digits
    title: str = "Dr"

    @property
    def display_name(self) -> str:
        return f"{self.title} {self.given_name} {self.family_name}".strip()

    @property
    def specialty_fr(self) -> str:
        found = SPECIALTIES.get(self.specialty)
        return found.fr if found else self.specialty


@dataclass(frozen=True)
class Organisation:
    id: Identifier
    name: str
    address: Address | None = None


@dataclass(frozen=True)
class Replacement:
    """The document a new version replaces (relatedDocument typeCode RPLC)."""

    parent_id: Identifier
    parent_version: int


@dataclass(frozen=True)
class Header:
    """What every Konsil document has: who, for whom, which version, how confidential."""

    document_id: Identifier
    set_id: Identifier
    patient: Patient
    author: Practitioner
    organisation: Organisation
    legal_authenticator: Practitioner | None = None  # the author when None
    version: int = 1
    replaces: Replacement | None = None
    confidentiality: str = "N"
    title: str | None = None  # defaults to the document type's display name
    recipients: tuple[str, ...] = field(default_factory=tuple)

    @property
    def authenticator(self) -> Practitioner:
        return self.legal_authenticator or self.author


def local_time(now: datetime) -> datetime:
    """``now`` (timezone-aware) as Luxembourg local time, as documents show it."""
    return now.astimezone(LUXEMBOURG)


def check_identifier(p: Problems, value: Identifier, name: str) -> None:
    if not OID_RE.match(value.root):
        p.add(f"{name}.root", "is not an OID")
    if value.extension is not None:
        p.text(value.extension, f"{name}.extension", limit=200)


def check_address(p: Problems, value: Address, name: str) -> None:
    p.text(value.street, f"{name}.street", limit=200)
    p.text(value.city, f"{name}.city", limit=100)
    if not POSTAL_CODE_RE.match(value.postal_code.strip()):
        p.add(f"{name}.postal_code", "is not a postal code")
    if not COUNTRY_RE.match(value.country):
        p.add(f"{name}.country", "must be an ISO 3166 two-letter country code")


def check_patient(p: Problems, value: Patient, name: str, *, today: date) -> None:
    p.matricule(value.matricule, f"{name}.matricule", today=today)
    if f"{name}.matricule" not in p.fields:
        try:
            check_matricule(value.matricule, birth_date=value.birth_date)
        except ValidationError:
            p.add(f"{name}.birth_date", "does not match the matricule")
    if value.birth_date > today:
        p.add(f"{name}.birth_date", "is in the future")
    p.text(value.given_name, f"{name}.given_name", limit=100)
    p.text(value.family_name, f"{name}.family_name", limit=100)
    if value.sex not in codes.ADMIN_GENDER:
        p.add(f"{name}.sex", "unknown code {code!r} (F, M or UN)", code=value.sex)
    if value.address is not None:
        check_address(p, value.address, f"{name}.address")


def check_practitioner(p: Problems, value: Practitioner, name: str) -> None:
    check_identifier(p, value.id, f"{name}.id")
    p.text(value.given_name, f"{name}.given_name", limit=100)
    p.text(value.family_name, f"{name}.family_name", limit=100)
    if value.specialty not in SPECIALTIES:
        p.add(f"{name}.specialty", "unknown specialty code {code!r}", code=value.specialty)
    if value.cns_code is not None and not CNS_PROVIDER_RE.match(value.cns_code):
        p.add(f"{name}.cns_code", "a CNS provider code has 8 digits (e.g. 90812100 or 908121-00)")


def check_header(p: Problems, h: Header, *, now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        # A programming error, not user input: say so loudly.
        raise ValueError("documents need a timezone-aware 'now'")
    today = local_time(now).date()
    check_identifier(p, h.document_id, "document_id")
    check_identifier(p, h.set_id, "set_id")
    check_patient(p, h.patient, "patient", today=today)
    check_practitioner(p, h.author, "author")
    if h.legal_authenticator is not None:
        check_practitioner(p, h.legal_authenticator, "legal_authenticator")
    check_identifier(p, h.organisation.id, "organisation.id")
    p.text(h.organisation.name, "organisation.name", limit=200)
    if h.organisation.address is not None:
        check_address(p, h.organisation.address, "organisation.address")
    if h.confidentiality not in codes.CONFIDENTIALITY:
        p.add("confidentiality", "unknown code {code!r} (N, R or V)", code=h.confidentiality)
    if h.version < 1:
        p.add("version", "starts at 1")
    elif h.version == 1 and h.replaces is not None:
        p.add("replaces", "a first version replaces nothing")
    elif h.version > 1:
        if h.replaces is None:
            p.add("replaces", "a new version must name the document it replaces")
        else:
            check_identifier(p, h.replaces.parent_id, "replaces.parent_id")
            if h.replaces.parent_id == h.document_id:
                p.add("replaces.parent_id", "a document cannot replace itself")
            if h.replaces.parent_version >= h.version:
                p.add("replaces.parent_version", "must be lower than the new version")
    if h.title is not None:
        p.text(h.title, "title", limit=200)
    for i, r in enumerate(h.recipients):
        p.text(r, f"recipients.{i}", limit=200)


def check_icd10(p: Problems, code: str, name: str) -> None:
    if not ICD10_RE.match(code):
        p.add(name, "{code!r} is not an ICD-10 code (e.g. J06.9)", code=code)


def check_choice(p: Problems, value: str, allowed: Iterable[str], name: str) -> None:
    options = list(allowed)
    if value not in options:
        p.add(
            name,
            "unknown code {code!r} (one of: {options})",
            code=value,
            options=", ".join(options),
        )
