"""Teleconsultation tables: appointments, invitations, consents, chat, exchanged files and the
documents issued after the call."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from konsil.db import Base, UTCDateTime


def new_id() -> str:
    return uuid.uuid4().hex


class VideoAppointment(Base):
    __tablename__ = "video_appointments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    practitioner_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    duration_minutes: Mapped[int] = mapped_column(Integer(), default=20)
    reason: Mapped[str | None] = mapped_column(String(200))
    # scheduled | waiting | admitted | ended | cancelled
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    contact_email: Mapped[str | None] = mapped_column(String(200))
    contact_phone: Mapped[str | None] = mapped_column(String(40))
    check_result: Mapped[str | None] = mapped_column(Text())  # JSON of the pre-call check
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    admitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VideoInvitation(Base):
    """One link per appointment at a time; only hashes of the link and guest cookie are kept."""

    __tablename__ = "video_invitations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    appointment_id: Mapped[str] = mapped_column(ForeignKey("video_appointments.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    guest_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VideoConsent(Base):
    __tablename__ = "video_consents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    appointment_id: Mapped[str] = mapped_column(ForeignKey("video_appointments.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    identified_by: Mapped[str] = mapped_column(String(16))  # birth_date | matricule
    consent_text_version: Mapped[str] = mapped_column(String(16))
    consented_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VideoMessage(Base):
    __tablename__ = "video_messages"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    appointment_id: Mapped[str] = mapped_column(ForeignKey("video_appointments.id"), index=True)
    sender: Mapped[str] = mapped_column(String(16))  # doctor | patient
    body: Mapped[str] = mapped_column(Text())
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VideoFile(Base):
    __tablename__ = "video_files"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    appointment_id: Mapped[str] = mapped_column(ForeignKey("video_appointments.id"), index=True)
    sender: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer())
    sealed: Mapped[bytes] = mapped_column(LargeBinary())  # SecretBox(nonce + ciphertext)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime())


class VideoDocument(Base):
    """A document issued after the call (its signed CDA lives in ``clinical_documents``) with the
    patient's printable copy, sealed like the exchanged files."""

    __tablename__ = "video_documents"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    appointment_id: Mapped[str] = mapped_column(ForeignKey("video_appointments.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    kind: Mapped[str] = mapped_column(String(24))  # report | sick_leave | prescription
    document_id: Mapped[str] = mapped_column(String(32))  # the issued document's id
    title: Mapped[str] = mapped_column(String(200))
    pdf: Mapped[bytes] = mapped_column(LargeBinary())  # SecretBox(nonce + ciphertext)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
