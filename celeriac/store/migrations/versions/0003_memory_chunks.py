"""Long-term memory: the ``memory_chunks`` table the recall tool searches.

Created only when missing: a database that ``create_all`` made from models that
already declared it (no ``alembic_version``, adopted at 0001) has the table.

On PostgreSQL with pgvector, ``celeriac.memory.pgvector`` adds an ``embedding_vec``
column at run time, not here: whether the extension exists (or may be created by the
application's role) is a property of the server, decided when the index first runs.

Revision ID: 0003
Revises: 0002
Created: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("memory_chunks"):
        return
    op.create_table(
        "memory_chunks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "run_id", "seq", name="uq_memory_run_seq"),
    )
    op.create_index("ix_memory_tenant_model", "memory_chunks", ["tenant", "model"])
    op.create_index("ix_memory_tenant_thread", "memory_chunks", ["tenant", "thread_id"])


def downgrade() -> None:
    op.drop_table("memory_chunks")
