"""pgvector, where the PostgreSQL server has it: passages ranked inside the database.

The float32 bytes stay the source of truth (they work on every store); with
pgvector a ``vector`` column beside them is kept in step, and a search ships back k
rows instead of every vector of the tenant. The column is added at run time, not
declared on the model, because whether the extension exists is a property of the
server, not of the code: the same schema must create on SQLite and on a PostgreSQL
without pgvector (Debian 12 packages none).

The search is exact: the tenant's rows (found by their b-tree index) are all
measured. An HNSW index would filter by tenant *after* its approximate walk and
could return nothing for a small tenant among large ones; pgvector 0.8's iterative
scans fix that, and are the next step if one tenant's memory outgrows an exact scan.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from celeriac.memory.minilm import Vectors

log = structlog.get_logger(__name__)

# Serialises the ALTER TABLE of processes starting together (create_schema's is 4242001).
ADVISORY_LOCK = 4242010
BACKFILL_BATCH = 500


def literal(vector: Iterable[float]) -> str:
    """pgvector's text form, '[0.1,0.2,...]'; bound as a string and CAST in SQL, so
    neither the pgvector Python package nor a psycopg adapter is needed."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def enable(conn: Connection) -> bool:
    """Make ``memory_chunks`` pgvector-ready if this server can; False if it cannot
    (no extension available, or no right to create it). Call inside a transaction."""
    if not conn.scalar(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")):
        return False
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
    if not conn.scalar(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")):
        try:
            with conn.begin_nested():
                conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        except DBAPIError as exc:
            # Creating an extension needs rights the application's role may lack;
            # a DBA can run CREATE EXTENSION vector once, and the next start uses it.
            log.warning("pgvector_unavailable", reason=str(exc.orig).strip())
            return False
    # Untyped `vector`: any model's dimensions fit; rows are compared only within one
    # model (the `model` column), so mixed dimensions never meet.
    conn.execute(text("ALTER TABLE memory_chunks ADD COLUMN IF NOT EXISTS embedding_vec vector"))
    return True


def backfill(conn: Connection) -> int:
    """Fill the vector column of passages stored before pgvector was enabled."""
    import numpy as np

    filled = 0
    while True:
        rows = conn.execute(
            text(
                "SELECT id, embedding FROM memory_chunks WHERE embedding_vec IS NULL "
                "ORDER BY id LIMIT :n"
            ),
            {"n": BACKFILL_BATCH},
        ).all()
        if not rows:
            return filled
        conn.execute(
            text("UPDATE memory_chunks SET embedding_vec = CAST(:v AS vector) WHERE id = :id"),
            [
                {"id": row.id, "v": literal(np.frombuffer(row.embedding, dtype="<f4"))}
                for row in rows
            ],
        )
        filled += len(rows)


def write(session: Session, ids: Sequence[int], vectors: Vectors) -> None:
    if ids:
        session.execute(
            text("UPDATE memory_chunks SET embedding_vec = CAST(:v AS vector) WHERE id = :id"),
            [{"id": i, "v": literal(v)} for i, v in zip(ids, vectors, strict=True)],
        )


def search(
    session: Session,
    *,
    tenant: str,
    model: str,
    query: Vectors,
    k: int,
    exclude_thread: str | None,
    min_score: float,
) -> list[tuple[str, str, str, float]]:
    """(thread_id, run_id, text, score) of the best passage of each of the ``k``
    closest runs. ``<=>`` is cosine distance: on unit vectors, 1 - similarity."""
    exclude = "AND thread_id <> :exclude" if exclude_thread is not None else ""
    rows = session.execute(
        text(
            f"""
            SELECT thread_id, run_id, text, distance FROM (
                SELECT DISTINCT ON (run_id) thread_id, run_id, text,
                       embedding_vec <=> CAST(:query AS vector) AS distance
                FROM memory_chunks
                WHERE tenant = :tenant AND model = :model AND embedding_vec IS NOT NULL
                      {exclude}
                ORDER BY run_id, distance
            ) AS best
            WHERE distance <= :max_distance
            ORDER BY distance, run_id
            LIMIT :k
            """  # `exclude` is one of two constant strings; every value is bound
        ),
        {
            "query": literal(query),
            "tenant": tenant,
            "model": model,
            "exclude": exclude_thread,
            "max_distance": 1.0 - min_score,
            "k": k,
        },
    ).all()
    return [(r.thread_id, r.run_id, r.text, 1.0 - float(r.distance)) for r in rows]
