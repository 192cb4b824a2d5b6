"""video tables

Revision ID: video_0001
Revises:
Create Date: 2026-11-27 01:27:25.106942
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import konsil.db

revision = "video_0001"
down_revision = None
branch_labels = ("video",)
depends_on = "konsil_0001"


def upgrade() -> None:
    op.create_table(
        "video_appointments",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("practitioner_account_id", sa.String(length=32), nullable=False),
        sa.Column("patient_id", sa.String(length=32), nullable=False),
        sa.Column("starts_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("contact_email", sa.String(length=200), nullable=True),
        sa.Column("contact_phone", sa.String(length=40), nullable=True),
        sa.Column("check_result", sa.Text(), nullable=True),
        sa.Column("waiting_since", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("admitted_at", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_video_appointments_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["practitioner_account_id"],
            ["accounts.id"],
            name=op.f("fk_video_appointments_practitioner_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_appointments")),
    )
    with op.batch_alter_table("video_appointments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_video_appointments_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_video_appointments_practitioner_account_id"),
            ["practitioner_account_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_video_appointments_starts_at"), ["starts_at"], unique=False
        )

    op.create_table(
        "video_consents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("appointment_id", sa.String(length=32), nullable=False),
        sa.Column("patient_id", sa.String(length=32), nullable=False),
        sa.Column("identified_by", sa.String(length=16), nullable=False),
        sa.Column("consent_text_version", sa.String(length=16), nullable=False),
        sa.Column("consented_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["video_appointments.id"],
            name=op.f("fk_video_consents_appointment_id_video_appointments"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_video_consents_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_consents")),
    )
    with op.batch_alter_table("video_consents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_video_consents_appointment_id"), ["appointment_id"], unique=False
        )

    op.create_table(
        "video_files",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("appointment_id", sa.String(length=32), nullable=False),
        sa.Column("sender", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["video_appointments.id"],
            name=op.f("fk_video_files_appointment_id_video_appointments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_files")),
    )
    with op.batch_alter_table("video_files", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_video_files_appointment_id"), ["appointment_id"], unique=False
        )

    op.create_table(
        "video_invitations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("appointment_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("guest_hash", sa.String(length=64), nullable=True),
        sa.Column("revoked_at", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["video_appointments.id"],
            name=op.f("fk_video_invitations_appointment_id_video_appointments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_invitations")),
        sa.UniqueConstraint("guest_hash", name=op.f("uq_video_invitations_guest_hash")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_video_invitations_token_hash")),
    )
    with op.batch_alter_table("video_invitations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_video_invitations_appointment_id"), ["appointment_id"], unique=False
        )

    op.create_table(
        "video_messages",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("appointment_id", sa.String(length=32), nullable=False),
        sa.Column("sender", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("sent_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["video_appointments.id"],
            name=op.f("fk_video_messages_appointment_id_video_appointments"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_messages")),
    )
    with op.batch_alter_table("video_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_video_messages_appointment_id"), ["appointment_id"], unique=False
        )

    op.create_table(
        "video_pending_issues",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("appointment_id", sa.String(length=32), nullable=False),
        sa.Column("patient_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["video_appointments.id"],
            name=op.f("fk_video_pending_issues_appointment_id_video_appointments"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patients.id"],
            name=op.f("fk_video_pending_issues_patient_id_patients"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_pending_issues")),
    )
    with op.batch_alter_table("video_pending_issues", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_video_pending_issues_appointment_id"), ["appointment_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_video_pending_issues_patient_id"), ["patient_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("video_pending_issues", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_pending_issues_patient_id"))
        batch_op.drop_index(batch_op.f("ix_video_pending_issues_appointment_id"))

    op.drop_table("video_pending_issues")
    with op.batch_alter_table("video_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_messages_appointment_id"))

    op.drop_table("video_messages")
    with op.batch_alter_table("video_invitations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_invitations_appointment_id"))

    op.drop_table("video_invitations")
    with op.batch_alter_table("video_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_files_appointment_id"))

    op.drop_table("video_files")
    with op.batch_alter_table("video_consents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_consents_appointment_id"))

    op.drop_table("video_consents")
    with op.batch_alter_table("video_appointments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_appointments_starts_at"))
        batch_op.drop_index(batch_op.f("ix_video_appointments_practitioner_account_id"))
        batch_op.drop_index(batch_op.f("ix_video_appointments_patient_id"))

    op.drop_table("video_appointments")
