"""The Kubernetes API server's version an executor of the kubernetes runtime reports in its
heartbeat (`kubernetesVersion`, as `dockerVersion` for the docker runtime): executors.kubernetes_version.

Frozen: the column as it was when this revision was written (64 characters, "" for executors seen
before it and for every other runtime).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import Column, String, Text

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    kind = String(64).with_variant(Text(), "postgresql")
    op.add_column("executors", Column("kubernetes_version", kind, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("executors") as batch:
        batch.drop_column("kubernetes_version")
