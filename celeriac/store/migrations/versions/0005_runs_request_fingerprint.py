"""runs: request_fingerprint

The sha256 of the request an Idempotency-Key was first used with, so that the key
reused with a different request is refused (422) instead of silently answered with
the first task. Nullable: runs accepted before it stay NULL and match any request.
Added only when missing: a store that ``create_all`` made from today's models (no
``alembic_version``, adopted at 0001) has it already.

Revision ID: 0005
Revises: 0004
Created: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("runs")}
    if "request_fingerprint" not in columns:
        op.add_column("runs", sa.Column("request_fingerprint", sa.String(length=64),
                                        nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("request_fingerprint")
