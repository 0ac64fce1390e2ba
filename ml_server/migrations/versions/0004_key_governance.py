"""Key governance: per-key limits and budgets, the admin audit log, fleet-shared limit state.

``api_keys`` gains owner, allowed models, TPM, max concurrent, daily/monthly budgets (USD) and an
expiry. Three tables hold the state every server process reconciles with (ml_server/limits.py):
``limit_buckets`` (a token bucket per key and kind: requests, tokens), ``limit_inflight`` (each
process's in-flight requests per key) and ``spend_counters`` (USD per key per UTC day and month).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _key_columns() -> tuple[sa.Column[object], ...]:
    return (
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("allowed_models", sa.Text(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("max_concurrent", sa.Integer(), nullable=True),
        sa.Column("budget_daily_usd", sa.Numeric(20, 6), nullable=True),
        sa.Column("budget_monthly_usd", sa.Numeric(20, 6), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )


def upgrade() -> None:
    for column in _key_columns():
        op.add_column("api_keys", column)
    op.create_table(
        "admin_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("client", sa.String(64), nullable=True),
    )
    op.create_index("ix_admin_audit_at", "admin_audit", ["at"])
    op.create_table(
        "limit_buckets",
        sa.Column("key_id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "limit_inflight",
        sa.Column("process_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.Integer(), primary_key=True),
        sa.Column("inflight", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "spend_counters",
        sa.Column("key_id", sa.Integer(), primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("period_start", sa.Date(), primary_key=True),
        sa.Column("usd", sa.Numeric(24, 10), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Spend already recorded this month counts against the budgets from the start.
        op.execute(
            "INSERT INTO spend_counters (key_id, period, period_start, usd) "
            "SELECT api_key_id, 'day', (created_at AT TIME ZONE 'UTC')::date, sum(cost_usd) "
            "FROM usage WHERE api_key_id IS NOT NULL AND cost_usd IS NOT NULL "
            "AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
            "GROUP BY 1, 3"
        )
        op.execute(
            "INSERT INTO spend_counters (key_id, period, period_start, usd) "
            "SELECT api_key_id, 'month', (date_trunc('month', now() AT TIME ZONE 'UTC'))::date, "
            "sum(cost_usd) FROM usage WHERE api_key_id IS NOT NULL AND cost_usd IS NOT NULL "
            "AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' "
            "GROUP BY 1"
        )


def downgrade() -> None:
    op.drop_table("spend_counters")
    op.drop_table("limit_inflight")
    op.drop_table("limit_buckets")
    op.drop_index("ix_admin_audit_at", table_name="admin_audit")
    op.drop_table("admin_audit")
    with op.batch_alter_table("api_keys") as batch:
        for column in reversed(_key_columns()):
            batch.drop_column(column.name)
