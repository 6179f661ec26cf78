"""Online experiments: every list served (`impressions`: its request id, user, items, bundle, experiment and
variant, and each slot's propensity), the events that name the list they answer (`events.request_id`), and the
experiments themselves (`experiments`: variants and traffic shares as JSON, status and times).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "impressions",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("bundle_version", sa.String(128), nullable=False),
        sa.Column("experiment", sa.String(64), nullable=True),
        sa.Column("variant", sa.String(64), nullable=True),
        sa.Column("items", sa.Text(), nullable=False),  # JSON: the item ids, in the order shown
        sa.Column("propensities", sa.Text(), nullable=True),  # JSON: each slot's probability under the policy
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_impressions_experiment_created_at", "impressions", ["experiment", "created_at"])
    op.create_index("ix_impressions_user_id", "impressions", ["user_id"])
    # The post-publish guard: a bundle's first list, the list before it, a bundle's lists since a time.
    op.create_index("ix_impressions_bundle_version_created_at", "impressions", ["bundle_version", "created_at"])
    op.create_index("ix_impressions_created_at", "impressions", ["created_at"])
    op.add_column("events", sa.Column("request_id", sa.String(64), nullable=True))
    op.create_index("ix_events_request_id", "events", ["request_id"])
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("variants", sa.Text(), nullable=False),  # JSON: [{name, share, settings...}]
        sa.Column("status", sa.String(16), nullable=False),  # created | running | stopped
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("stopped_at", sa.Float(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("experiments")
    op.drop_index("ix_events_request_id", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("request_id")
    op.drop_index("ix_impressions_created_at", table_name="impressions")
    op.drop_index("ix_impressions_bundle_version_created_at", table_name="impressions")
    op.drop_index("ix_impressions_user_id", table_name="impressions")
    op.drop_index("ix_impressions_experiment_created_at", table_name="impressions")
    op.drop_table("impressions")
