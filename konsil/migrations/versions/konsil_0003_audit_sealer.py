"""audit rows appended unsealed, chained later by the sealer

Revision ID: konsil_0003
Revises: konsil_0002
Create Date: 2026-11-27 04:45:00

``seq`` becomes generated (a sequence on PostgreSQL; the rowid already is on SQLite), the chain
order moves to ``position`` (NULL until sealed; existing rows keep ``position == seq`` so their
hashes stay valid), and ``prev_hash``/``hash`` may be NULL until sealed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "konsil_0003"
down_revision = "konsil_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.create_index(batch_op.f("ix_audit_events_position"), ["position"], unique=True)
    op.execute("UPDATE audit_events SET position = seq")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE SEQUENCE audit_events_seq_seq OWNED BY audit_events.seq")
        op.execute(
            "SELECT setval('audit_events_seq_seq', COALESCE((SELECT max(seq) FROM audit_events), 0) + 1, false)"
        )
        op.execute(
            "ALTER TABLE audit_events ALTER COLUMN seq SET DEFAULT nextval('audit_events_seq_seq')"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE audit_events ALTER COLUMN seq DROP DEFAULT")
        op.execute("DROP SEQUENCE audit_events_seq_seq")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_position"))
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column("position")
