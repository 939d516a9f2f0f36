"""The file store: files by bucket and key (Sourcegraph's files API), content in the database.

Frozen: the table as it was when this revision was written (types spelled as 0001 spells them).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Column, Float, Integer, LargeBinary, String, Text
from sqlalchemy.types import TypeEngine

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _int() -> TypeEngine[int]:
    return BigInteger().with_variant(Integer(), "sqlite")


def _str(length: int) -> TypeEngine[str]:
    return String(length).with_variant(Text(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "files",
        Column("bucket", _str(64), primary_key=True),
        Column("key", _str(1024), primary_key=True),
        Column("size", _int(), nullable=False),
        Column("sha256", _str(64), nullable=False),
        Column("content", LargeBinary, nullable=False),
        Column("created_at", Float, nullable=False),
        Column("updated_at", Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("files")
