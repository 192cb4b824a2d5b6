"""Workflow tables: clinical documents, organisations' signing keys, the outbox and its attempts."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from konsil.db import Base, UTCDateTime

DOC_STATUSES = ("draft", "final", "amended", "entered-in-error")
OUTBOX_STATUSES = ("pending", "in_flight", "delivered", "rejected", "dead", "cancelled")
OUTBOX_KINDS = ("document", "withdrawal")  # withdrawal: workflow.withdrawal


def new_id() -> str:
    return uuid.uuid4().hex


class SigningKey(Base):
    """One signing key per organisation; the private half is sealed with a key from config."""

    __tablename__ = "workflow_signing_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    organisation_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"), unique=True)
    algorithm: Mapped[str] = mapped_column(String(16))  # "ed25519"
    public_key: Mapped[bytes] = mapped_column(LargeBinary())
    sealed_private_key: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ClinicalDocument(Base):
    """One version of a clinical document. ``set_id`` groups the versions of one document."""

    __tablename__ = "clinical_documents"
    __table_args__ = (
        UniqueConstraint("set_id", "version"),
        # the author's and a patient's listings, newest first, paged by (created_at, id)
        Index("ix_clinical_documents_author_listing", "author_account_id", "created_at", "id"),
        Index("ix_clinical_documents_patient_listing", "patient_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    set_id: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(Integer())
    replaces_id: Mapped[str | None] = mapped_column(ForeignKey("clinical_documents.id"))
    kind: Mapped[str] = mapped_column(String(32))  # sick-leave | rcp-report | ...
    type_code: Mapped[str] = mapped_column(String(16))  # DT-xxxxx in 1.3.182.5.9
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    author_account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"))
    author_practitioner_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"))
    legal_authenticator_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"))
    organisation_id: Mapped[str] = mapped_column(ForeignKey("organisations.id"))
    status: Mapped[str] = mapped_column(String(16))
    confidentiality: Mapped[str] = mapped_column(String(1))  # N | R | V
    mime_type: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finalised_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    content: Mapped[bytes] = mapped_column(LargeBinary())
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer())
    signature: Mapped[bytes | None] = mapped_column(LargeBinary())
    signing_key_id: Mapped[str | None] = mapped_column(ForeignKey("workflow_signing_keys.id"))


class OutboxMessage(Base):
    """Something that must reach the outside, written in the transaction that decided it."""

    __tablename__ = "outbox_messages"
    __table_args__ = (Index("ix_outbox_messages_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    target: Mapped[str] = mapped_column(String(16))  # cns | dsp
    kind: Mapped[str] = mapped_column(String(32))  # OUTBOX_KINDS
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    payload: Mapped[str] = mapped_column(Text())  # JSON
    document_id: Mapped[str | None] = mapped_column(ForeignKey("clinical_documents.id"), index=True)
    author_account_id: Mapped[str | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer(), default=0)
    max_attempts: Mapped[int] = mapped_column(Integer())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    remote_reference: Mapped[str | None] = mapped_column(String(200))
    last_error: Mapped[str | None] = mapped_column(Text())


class OutboxAttempt(Base):
    """One delivery attempt, kept for the trace page."""

    __tablename__ = "outbox_attempts"

    id: Mapped[int] = mapped_column(Integer(), primary_key=True, autoincrement=True)
    message_id: Mapped[str] = mapped_column(ForeignKey("outbox_messages.id"), index=True)
    number: Mapped[int] = mapped_column(Integer())
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    worker: Mapped[str] = mapped_column(String(64))
    target_url: Mapped[str] = mapped_column(String(500))
    outcome: Mapped[str] = mapped_column(String(16))  # delivered | rejected | error
    http_status: Mapped[int | None] = mapped_column(Integer())
    latency_ms: Mapped[int] = mapped_column(Integer())
    error: Mapped[str | None] = mapped_column(Text())
