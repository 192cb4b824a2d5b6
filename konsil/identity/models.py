"""Identity tables: organisations, practitioners, patients, accounts."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import Boolean, Date, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from konsil.db import Base, UTCDateTime

EXTERNAL = "external"  # messaging only, as a Matrix guest: see docs/ARCHITECTURE.md
ROLES = ("admin", "practitioner", "coordinator", EXTERNAL)  # the roles people are given
# Konsil's own system account (the RCP boards' Matrix rooms are run by it): no password, it
# cannot sign in, nobody can be given this role and nobody can take its user name.
SERVICE = "service"
SERVICE_USERNAME = "konsil"
RESERVED_USERNAMES = frozenset({SERVICE_USERNAME})


def new_id() -> str:
    return uuid.uuid4().hex


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # hospital | practice | lab | other
    identifier: Mapped[str | None] = mapped_column(String(64))  # e.g. national establishment code
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Practitioner(Base):
    __tablename__ = "practitioners"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    given_name: Mapped[str] = mapped_column(String(100))
    family_name: Mapped[str] = mapped_column(String(100))
    profession: Mapped[str] = mapped_column(String(32))
    specialty: Mapped[str | None] = mapped_column(String(64))
    cns_provider_code: Mapped[str | None] = mapped_column(String(32))
    organisation_id: Mapped[str | None] = mapped_column(ForeignKey("organisations.id"))
    email: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.family_name}"


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    matricule: Mapped[str] = mapped_column(String(13), unique=True)
    given_name: Mapped[str] = mapped_column(String(100))
    family_name: Mapped[str] = mapped_column(String(100))
    birth_date: Mapped[date] = mapped_column(Date())
    sex: Mapped[str] = mapped_column(String(1))  # F | M | U (administrative gender)
    email: Mapped[str | None] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(40))
    address: Mapped[str | None] = mapped_column(Text())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.family_name}"


class Account(Base):
    """A login. Practitioners' accounts are also their Matrix users (@username:server_name)."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(String(200))
    practitioner_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"))
    organisation_id: Mapped[str | None] = mapped_column(ForeignKey("organisations.id"))
    is_active: Mapped[bool] = mapped_column(Boolean(), default=True)
    is_guest: Mapped[bool] = mapped_column(Boolean(), default=False)
    totp_secret: Mapped[str | None] = mapped_column(String(255))  # sealed (konsil.crypto)
    failed_logins: Mapped[int] = mapped_column(Integer(), default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
