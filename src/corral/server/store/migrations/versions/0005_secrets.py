"""Executor secrets (global, user:NAME or org:NAME; values AES-GCM sealed) and their access log.

Frozen: the tables as they were when this revision was written (types spelled as 0001 spells them).
A global secret's namespace is stored as "" (not NULL) so that (name, namespace) stays unique.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Column, Float, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.types import TypeEngine

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _int() -> TypeEngine[int]:
    return BigInteger().with_variant(Integer(), "sqlite")


def _str(length: int) -> TypeEngine[str]:
    return String(length).with_variant(Text(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "secrets",
        Column("id", _int(), primary_key=True, autoincrement=True),
        Column("name", _str(128), nullable=False),
        Column("namespace", _str(256), nullable=False),
        Column("sealed", LargeBinary, nullable=False),
        Column("key_id", _str(32), nullable=False),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
        UniqueConstraint("name", "namespace", name="uq_secrets_name_namespace"),
    )
    op.create_table(
        "secret_accesses",
        Column("id", _int(), primary_key=True, autoincrement=True),
        Column("secret_id", _int(), nullable=False),
        Column("name", _str(128), nullable=False),
        Column("namespace", _str(256), nullable=False),
        Column("job_id", _int(), nullable=False),
        Column("attempt", _int(), nullable=False),
        Column("executor_name", _str(255), nullable=False),
        Column("accessed_at", Float, nullable=False),
        Index("ix_secret_accesses_secret", "secret_id", "id"),
    )


def downgrade() -> None:
    op.drop_table("secret_accesses")
    op.drop_table("secrets")
