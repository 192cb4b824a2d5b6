from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from konsil.db import Base, UTCDateTime

_BIGINT = BigInteger().with_variant(Integer(), "sqlite")


class AuditEvent(Base):
    """One audited action.

    ``seq`` is given at insert (a sequence on PostgreSQL, the rowid on SQLite); ``position``,
    ``prev_hash`` and ``hash`` are NULL until the sealer links the row into the chain:
    ``hash`` = SHA-256 over the previous row's hash (in ``position`` order) and this row's fields.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(_BIGINT, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(100))  # account id, "guest:<appointment>", "system"
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. patient.read, login
    patient_id: Mapped[str | None] = mapped_column(String(32), index=True)
    resource: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(16))  # success | failure | denied
    ip: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text(), default="{}")  # JSON; never clinical content
    position: Mapped[int | None] = mapped_column(_BIGINT, unique=True, index=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
