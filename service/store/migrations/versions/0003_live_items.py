"""Items added while serving (PUT /v1/items), in the order the database took them: every replica follows this
table and re-applies it at start and on reload.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "live_items",
        sa.Column("seq", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),  # JSON: what the client sent (id, title, genres, year, ...)
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("item_id", name="uq_live_items_item_id"),
    )


def downgrade() -> None:
    op.drop_table("live_items")
