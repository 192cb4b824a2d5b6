"""Issued after-call documents (video_documents) replace the pending queue (video_pending_issues)

Revision ID: video_0002
Revises: video_0001
Create Date: 2026-11-27 02:38:16.832505
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import konsil.db

revision = "video_0002"
down_revision = "video_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "video_documents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("appointment_id", sa.String(length=32), nullable=False),
        sa.Column("patient_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("document_id", sa.String(length=32), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("pdf", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"],
            ["video_appointments.id"],
            name=op.f("fk_video_documents_appointment_id_video_appointments"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_video_documents_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_video_documents")),
    )
    with op.batch_alter_table("video_documents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_video_documents_appointment_id"), ["appointment_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_video_documents_patient_id"), ["patient_id"], unique=False
        )

    with op.batch_alter_table("video_pending_issues", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_pending_issues_appointment_id"))
        batch_op.drop_index(batch_op.f("ix_video_pending_issues_patient_id"))

    op.drop_table("video_pending_issues")


def downgrade() -> None:
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
            batch_op.f("ix_video_pending_issues_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_video_pending_issues_appointment_id"), ["appointment_id"], unique=False
        )

    with op.batch_alter_table("video_documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_video_documents_patient_id"))
        batch_op.drop_index(batch_op.f("ix_video_documents_appointment_id"))

    op.drop_table("video_documents")
