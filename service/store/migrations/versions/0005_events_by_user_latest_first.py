"""Events by user and id: a user's latest events are read as the first rows of one index range (every event
write's read-back, and a request's read on a cache miss), however long the user's history. It replaces the
index on user_id alone, which it covers.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_events_user_id_id", "events", ["user_id", "id"])
    op.drop_index("ix_events_user_id", table_name="events")


def downgrade() -> None:
    op.create_index("ix_events_user_id", "events", ["user_id"])
    op.drop_index("ix_events_user_id_id", table_name="events")
