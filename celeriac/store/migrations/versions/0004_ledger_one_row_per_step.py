"""ledger: one row per step

A step pays for one answer: a rerun after its worker died records the journaled
answer instead of paying again (celeriac.durability.journal), so ledger.step_id becomes unique.

Revision ID: 0004
Revises: 0003
Created: 2026-11-25 02:57:08.888157
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Before the journal, a step executed twice was (rarely) paid twice, with a ledger
    # row each. Those rows are money that was spent, so they stay: every row after a
    # step's first gets a marked step id ("<step>#2", ...), and the spend still adds up.
    ledger = sa.table("ledger", sa.column("id", sa.Integer), sa.column("step_id", sa.String))
    conn = op.get_bind()
    rows = conn.execute(sa.select(ledger.c.id, ledger.c.step_id).order_by(ledger.c.id)).all()
    seen: dict[str, int] = {}
    for row_id, step_id in rows:
        seen[step_id] = seen.get(step_id, 0) + 1
        if seen[step_id] > 1:
            conn.execute(
                ledger.update()
                .where(ledger.c.id == row_id)
                .values(step_id=f"{step_id}#{seen[step_id]}")
            )
    # A store made by create_all of these models (before migrations were adopted)
    # has the constraint already and never had the index: do only what is missing.
    inspector = sa.inspect(conn)
    indexes = {index["name"] for index in inspector.get_indexes("ledger")}
    uniques = {unique["name"] for unique in inspector.get_unique_constraints("ledger")}
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        if "ix_ledger_step_id" in indexes:
            batch_op.drop_index("ix_ledger_step_id")
        if "uq_ledger_step_id" not in uniques:
            batch_op.create_unique_constraint("uq_ledger_step_id", ["step_id"])


def downgrade() -> None:
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_constraint("uq_ledger_step_id", type_="unique")
        batch_op.create_index(batch_op.f("ix_ledger_step_id"), ["step_id"], unique=False)
