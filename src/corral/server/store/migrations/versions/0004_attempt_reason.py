"""Why an attempt ended (attempts.reason): "executor X stopped heartbeating; requeued", the message
of its markErrored/markFailed, "handed to an executor that had gone", ... (issue 15).

Frozen: the column as it was when this revision was written (TEXT, nullable: older attempts have none).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import Column, Text

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("attempts", Column("reason", Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("reason")
