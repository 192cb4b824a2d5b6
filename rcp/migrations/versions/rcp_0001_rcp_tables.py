"""RCP tables: boards, members, schedules, sessions, attendance, cases (fiche RCP, versioned),
decisions, attachments, pending publications.

Revision ID: rcp_0001
Revises:
Create Date: 2026-11-27 01:17:23.342402
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import konsil.db

revision = "rcp_0001"
down_revision = None
branch_labels = ("rcp",)
depends_on = "konsil_0001"


def upgrade() -> None:
    op.create_table(
        "rcp_boards",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("tumour_domain", sa.String(length=32), nullable=False),
        sa.Column("host_organisation_id", sa.String(length=32), nullable=True),
        sa.Column("min_physicians", sa.Integer(), nullable=False),
        sa.Column("min_specialties", sa.Integer(), nullable=False),
        sa.Column("required_specialties", sa.JSON(), nullable=False),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_organisation_id"],
            ["organisations.id"],
            name=op.f("fk_rcp_boards_host_organisation_id_organisations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rcp_boards")),
        sa.UniqueConstraint("name", name=op.f("uq_rcp_boards_name")),
    )
    op.create_table(
        "rcp_schedules",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("board_id", sa.String(length=32), nullable=False),
        sa.Column("weekday", sa.Integer(), nullable=False),
        sa.Column("start_local", sa.String(length=5), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("deadline_hours", sa.Integer(), nullable=False),
        sa.Column("place", sa.String(length=200), nullable=False),
        sa.Column("video_link", sa.String(length=500), nullable=False),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["board_id"], ["rcp_boards.id"], name=op.f("fk_rcp_schedules_board_id_rcp_boards")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rcp_schedules")),
    )
    with op.batch_alter_table("rcp_schedules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rcp_schedules_board_id"), ["board_id"], unique=False)

    op.create_table(
        "rcp_board_members",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("board_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("specialty", sa.String(length=64), nullable=True),
        sa.Column("is_chair", sa.Boolean(), nullable=False),
        sa.Column("is_coordinator", sa.Boolean(), nullable=False),
        sa.Column("added_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_rcp_board_members_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["board_id"], ["rcp_boards.id"], name=op.f("fk_rcp_board_members_board_id_rcp_boards")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rcp_board_members")),
        sa.UniqueConstraint(
            "board_id", "account_id", name=op.f("uq_rcp_board_members_board_id_account_id")
        ),
    )
    with op.batch_alter_table("rcp_board_members", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rcp_board_members_account_id"), ["account_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_rcp_board_members_board_id"), ["board_id"], unique=False
        )

    op.create_table(
        "rcp_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("board_id", sa.String(length=32), nullable=False),
        sa.Column("schedule_id", sa.String(length=32), nullable=True),
        sa.Column("starts_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("submission_deadline", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("place", sa.String(length=200), nullable=False),
        sa.Column("video_link", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["board_id"], ["rcp_boards.id"], name=op.f("fk_rcp_sessions_board_id_rcp_boards")
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["rcp_schedules.id"],
            name=op.f("fk_rcp_sessions_schedule_id_rcp_schedules"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rcp_sessions")),
        sa.UniqueConstraint(
            "board_id", "starts_at", name=op.f("uq_rcp_sessions_board_id_starts_at")
        ),
    )
    with op.batch_alter_table("rcp_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rcp_sessions_board_id"), ["board_id"], unique=False)

    op.create_table(
        "rcp_attendance",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("specialty", sa.String(length=64), nullable=True),
        sa.Column("checked_in_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("checked_in_by", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_rcp_attendance_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["rcp_sessions.id"],
            name=op.f("fk_rcp_attendance_session_id_rcp_sessions"),
        ),
        sa.PrimaryKeyConstraint("session_id", "account_id", name=op.f("pk_rcp_attendance")),
    )
    op.create_table(
        "rcp_cases",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("board_id", sa.String(length=32), nullable=False),
        sa.Column("patient_id", sa.String(length=32), nullable=False),
        sa.Column("referrer_account_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=True),
        sa.Column("agenda_position", sa.Integer(), nullable=False),
        sa.Column("fiche", sa.JSON(), nullable=False),
        sa.Column("status_note", sa.Text(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("signed_by", sa.String(length=32), nullable=True),
        sa.Column("signed_at", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("publication_ref", sa.String(length=200), nullable=True),
        sa.Column("published_at", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["board_id"], ["rcp_boards.id"], name=op.f("fk_rcp_cases_board_id_rcp_boards")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_rcp_cases_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["referrer_account_id"],
            ["accounts.id"],
            name=op.f("fk_rcp_cases_referrer_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["rcp_sessions.id"], name=op.f("fk_rcp_cases_session_id_rcp_sessions")
        ),
        sa.ForeignKeyConstraint(
            ["signed_by"], ["accounts.id"], name=op.f("fk_rcp_cases_signed_by_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rcp_cases")),
    )
    with op.batch_alter_table("rcp_cases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rcp_cases_board_id"), ["board_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rcp_cases_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_rcp_cases_referrer_account_id"), ["referrer_account_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_rcp_cases_session_id"), ["session_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rcp_cases_state"), ["state"], unique=False)

    op.create_table(
        "rcp_attachments",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uploaded_by", sa.String(length=32), nullable=False),
        sa.Column("uploaded_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["rcp_cases.id"], name=op.f("fk_rcp_attachments_case_id_rcp_cases")
        ),
        sa.ForeignKeyConstraint(
            ["uploaded_by"], ["accounts.id"], name=op.f("fk_rcp_attachments_uploaded_by_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rcp_attachments")),
    )
    with op.batch_alter_table("rcp_attachments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rcp_attachments_case_id"), ["case_id"], unique=False)

    op.create_table(
        "rcp_decisions",
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("decision", sa.JSON(), nullable=False),
        sa.Column("quorum", sa.JSON(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("decided_by", sa.String(length=32), nullable=False),
        sa.Column("decided_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["rcp_cases.id"], name=op.f("fk_rcp_decisions_case_id_rcp_cases")
        ),
        sa.ForeignKeyConstraint(
            ["decided_by"], ["accounts.id"], name=op.f("fk_rcp_decisions_decided_by_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["rcp_sessions.id"],
            name=op.f("fk_rcp_decisions_session_id_rcp_sessions"),
        ),
        sa.PrimaryKeyConstraint("case_id", name=op.f("pk_rcp_decisions")),
    )
    op.create_table(
        "rcp_pending_publications",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("case_id", sa.String(length=32), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("queued_at", konsil.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("drained_at", konsil.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["rcp_cases.id"],
            name=op.f("fk_rcp_pending_publications_case_id_rcp_cases"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rcp_pending_publications")),
    )
    with op.batch_alter_table("rcp_pending_publications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rcp_pending_publications_case_id"), ["case_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("rcp_pending_publications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rcp_pending_publications_case_id"))

    op.drop_table("rcp_pending_publications")
    op.drop_table("rcp_decisions")
    with op.batch_alter_table("rcp_attachments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rcp_attachments_case_id"))

    op.drop_table("rcp_attachments")
    with op.batch_alter_table("rcp_cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rcp_cases_state"))
        batch_op.drop_index(batch_op.f("ix_rcp_cases_session_id"))
        batch_op.drop_index(batch_op.f("ix_rcp_cases_referrer_account_id"))
        batch_op.drop_index(batch_op.f("ix_rcp_cases_patient_id"))
        batch_op.drop_index(batch_op.f("ix_rcp_cases_board_id"))

    op.drop_table("rcp_cases")
    op.drop_table("rcp_attendance")
    with op.batch_alter_table("rcp_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rcp_sessions_board_id"))

    op.drop_table("rcp_sessions")
    with op.batch_alter_table("rcp_board_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rcp_board_members_board_id"))
        batch_op.drop_index(batch_op.f("ix_rcp_board_members_account_id"))

    op.drop_table("rcp_board_members")
    with op.batch_alter_table("rcp_schedules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rcp_schedules_board_id"))

    op.drop_table("rcp_schedules")
    op.drop_table("rcp_boards")
