"""Listings page by (created_at, id): one index per listing replaces the single-column ones.

Revision ID: workflow_0002
Revises: workflow_0001
Create Date: 2026-11-27 11:00:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "workflow_0002"
down_revision = "workflow_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("clinical_documents", schema=None) as batch_op:
        batch_op.drop_index("ix_clinical_documents_author_account_id")
        batch_op.drop_index("ix_clinical_documents_patient_id")
        batch_op.create_index(
            "ix_clinical_documents_author_listing", ["author_account_id", "created_at", "id"]
        )
        batch_op.create_index(
            "ix_clinical_documents_patient_listing", ["patient_id", "created_at", "id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("clinical_documents", schema=None) as batch_op:
        batch_op.drop_index("ix_clinical_documents_patient_listing")
        batch_op.drop_index("ix_clinical_documents_author_listing")
        batch_op.create_index("ix_clinical_documents_patient_id", ["patient_id"])
        batch_op.create_index("ix_clinical_documents_author_account_id", ["author_account_id"])
