"""Which API key created which stored OpenAI response (``/v1/responses/{id}`` ownership).

A response created through the gateway is stored at OpenAI under the gateway's credential, so
OpenAI cannot tell the gateway's keys apart: ``GET``/``DELETE /v1/responses/{id}`` (and its
``input_items`` and ``cancel``) are answered only for the key recorded here. A table, not a
per-process map: any instance of the fleet may get the follow-up request, and it must survive
restarts and deploys (OpenAI keeps stored responses 30 days; older rows are pruned).

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "response_owners",
        sa.Column("response_id", sa.String(128), primary_key=True),
        sa.Column("key_id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_index("ix_response_owners_created_at", "response_owners", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_response_owners_created_at", table_name="response_owners")
    op.drop_table("response_owners")
