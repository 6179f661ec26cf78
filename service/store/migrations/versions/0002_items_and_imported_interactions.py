"""Items (imported and, later, added live), users' attributes, and an interaction's rating: what
`python -m model_export import` loads and `train --database` reads back.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "items",
        sa.Column("item_id", sa.String(128), primary_key=True),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("categories", sa.Text(), nullable=False, server_default=""),  # '|'-separated
        sa.Column("year", sa.Integer(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False, server_default="{}"),  # JSON: numeric and text columns
        sa.Column("source", sa.String(16), nullable=False),  # import | live
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("attributes", sa.Text(), nullable=False, server_default="{}"))  # JSON
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("rating", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("rating")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("attributes")
    op.drop_table("items")
