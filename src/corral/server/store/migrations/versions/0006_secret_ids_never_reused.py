"""A deleted secret's id is never given to a new one (its access log stays its own).

SQLite reuses the largest rowid of a table without AUTOINCREMENT: delete the newest secret, add
another, and the new one inherited the old one's id and so its entries in secret_accesses. The
secrets table is rebuilt with AUTOINCREMENT, and its sequence starts after every id the access log
names (ids deleted before this revision are not reused either). PostgreSQL's sequence never
reuses an id: nothing to do there.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "secrets", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.alter_column("id", autoincrement=True)
    op.execute("DELETE FROM sqlite_sequence WHERE name = 'secrets'")
    op.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'secrets', MAX("
        "COALESCE((SELECT MAX(id) FROM secrets), 0), "
        "COALESCE((SELECT MAX(secret_id) FROM secret_accesses), 0))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("secrets", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
        pass
