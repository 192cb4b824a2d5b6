from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from konsil.db import Base, UTCDateTime


class AuditEvent(Base):
    """One audited action. ``hash`` = SHA-256 over the previous hash and this row's fields."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(100))  # account id, "guest:<appointment>", "system"
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. patient.read, login
    patient_id: Mapped[str | None] = mapped_column(String(32), index=True)
    resource: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))  # success | failure | denied
    ip: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text(), default="{}")  # JSON; never clinical content
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
