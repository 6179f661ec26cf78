"""The bundle registry: every bundle built by `python -m model_export retrain` (its data window, both gate
scores, whether it was published), and every retrain run; the published bundle is the one every replica serves.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bundles",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("data_window", sa.Text(), nullable=False),  # JSON: first and last event time, counts
        sa.Column("metrics", sa.Text(), nullable=False),  # JSON: the gate's scores, candidate and published
        sa.Column("gate", sa.String(32), nullable=False),  # passed | failed | first | overridden
        sa.Column("status", sa.String(16), nullable=False),  # published | retired | rejected | rolled_back
        sa.Column("published_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_bundles_status", "bundles", ["status"])
    op.create_table(
        "retrains",
        sa.Column("id", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=False),
        sa.Column("result", sa.String(16), nullable=False),  # published | rejected | skipped | failed
        sa.Column("version", sa.String(128), nullable=True),
        sa.Column("message", sa.Text(), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("retrains")
    op.drop_index("ix_bundles_status", "bundles")
    op.drop_table("bundles")
