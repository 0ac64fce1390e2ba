"""The memory layer's table (ml_server/memory/).

On PostgreSQL the embeddings are pgvector ``vector`` values: the migration enables the ``vector``
extension and creates ``memories`` with an HNSW index (cosine distance) on the default
dimension (1536; the store adds one for another MEMORY_EMBEDDING_DIMENSIONS). The column is
``vector`` without a fixed dimension and ``dims`` says each row's, so the index is a partial
expression index, ``(embedding::vector(N)) WHERE dims = N``, which the store's query repeats.

Where the extension is not available on the server (``pg_available_extensions``: e.g. Debian's
PostgreSQL 15 without the pgvector package) the migration creates neither the extension nor the
table and logs why; the memory API then answers 503 naming the cause. RDS PostgreSQL 16 has it.

On SQLite (``make serve``) ``memories`` keeps each embedding as float32 bytes and the store
searches exactly, in Python.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")
DEFAULT_DIMS = 1536


class _Vector(sa.types.UserDefinedType[object]):
    """pgvector's ``vector`` with no fixed dimension (each row's is in ``dims``)."""

    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        return "vector"


def _columns(embedding: sa.types.TypeEngine[Any]) -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        # The API key whose memory this is (no foreign key: like usage rows, it outlives a
        # deleted key until someone deletes it).
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("agent_id", sa.String(200), nullable=True),
        sa.Column("run_id", sa.String(200), nullable=True),
        sa.Column("memory", sa.Text(), nullable=False),
        sa.Column("hash", sa.String(32), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("embedding", embedding, nullable=False),
    ]


def _indexes() -> None:
    op.create_index("ix_memories_tenant_user", "memories", ["tenant_id", "user_id"])
    op.create_index("ix_memories_tenant_agent", "memories", ["tenant_id", "agent_id"])
    op.create_index("ix_memories_tenant_run", "memories", ["tenant_id", "run_id"])


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.create_table("memories", *_columns(sa.LargeBinary()))
        _indexes()
        return
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).scalar()
    if not available:
        log.warning(
            "0005: the PostgreSQL 'vector' extension (pgvector) is not available on this server; "
            "the memories table is not created and the memory API answers 503"
        )
        return
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table("memories", *_columns(_Vector()))
    _indexes()
    op.execute(
        f"CREATE INDEX ix_memories_embedding_{DEFAULT_DIMS} ON memories USING hnsw "
        f"((embedding::vector({DEFAULT_DIMS})) vector_cosine_ops) WHERE dims = {DEFAULT_DIMS}"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TABLE IF EXISTS memories")
        return  # the extension stays: other objects may use it
    op.drop_table("memories")
