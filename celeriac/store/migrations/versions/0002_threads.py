"""Threads: the ``threads`` table, and ``runs.thread_id`` (indexed) and
``runs.thread_seq``.

The last revision that can meet a database made by ``create_all`` before migrations
existed, so it creates only what is missing: such a database is stamped at 0001
whatever code made it, and code from between the two revisions had already made
``threads`` (create_all adds tables) but never the two columns (it cannot add a
column to an existing table). Later revisions need no such care.

``thread_seq`` gets a server default of 0 so that existing rows can take the NOT
NULL column; the model sets the value itself on every insert.

Revision ID: 0002
Revises: 0001
Created: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("threads"):
        op.create_table(
            "threads",
            sa.Column("id", sa.String(length=32), nullable=False),
            sa.Column("tenant", sa.String(length=64), nullable=False),
            sa.Column("turns", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_threads_tenant_updated", "threads", ["tenant", "updated_at"])
    columns = {column["name"] for column in inspector.get_columns("runs")}
    if "thread_id" not in columns:
        op.add_column("runs", sa.Column("thread_id", sa.String(length=32), nullable=True))
    if "thread_seq" not in columns:
        op.add_column("runs", sa.Column("thread_seq", sa.Integer(), nullable=False,
                                        server_default=sa.text("0")))
    if "ix_runs_thread_id" not in {index["name"] for index in inspector.get_indexes("runs")}:
        op.create_index("ix_runs_thread_id", "runs", ["thread_id"])


def downgrade() -> None:
    op.drop_index("ix_runs_thread_id", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("thread_seq")
        batch.drop_column("thread_id")
    op.drop_table("threads")
