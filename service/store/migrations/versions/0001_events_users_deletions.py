"""The system of record's first tables: events (append-only, idempotent by event_id), users, deletions.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite's rowid alias must be INTEGER


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(128), nullable=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("event_type", sa.String(16), nullable=False),
        sa.Column("timestamp", sa.Float(), nullable=True),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    )
    op.create_index("ix_events_user_id", "events", ["user_id"])
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(128), primary_key=True),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
    )
    op.create_table(
        "deletions",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("deleted_at", sa.Float(), nullable=False),
        sa.Column("events_deleted", sa.Integer(), nullable=False),
    )
    op.create_index("ix_deletions_user_id", "deletions", ["user_id"])


def downgrade() -> None:
    op.drop_table("deletions")
    op.drop_table("users")
    op.drop_index("ix_events_user_id", table_name="events")
    op.drop_table("events")
