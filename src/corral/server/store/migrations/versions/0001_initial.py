"""The initial schema: queues, repos, jobs, attempts, logs, results, executors.

It creates the tables as tables.py describes them today. The day a table changes, first freeze this
migration (copy today's table definitions here), then write the change as a new migration.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from corral.server.store.tables import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
