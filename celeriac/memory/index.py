"""Long-term memory: what each tenant's earlier threads said, searchable by meaning.

``remember`` cuts a finished turn into passages, embeds them and stores them;
``search`` embeds a query and returns the closest passages of that tenant only.

Vectors live in the store's own ``memory_chunks`` table as float32 bytes, on SQLite
and on PostgreSQL alike. Where the PostgreSQL server has pgvector, a ``vector``
column is kept beside them and the ranking happens in SQL (celeriac/memory/
pgvector.py). Elsewhere (SQLite; Debian 12's PostgreSQL 15, which has no pgvector
package) a search loads the tenant's vectors (1.5 kB each: 100k passages are 150 MB
and a ~50 ms matrix product) and ranks them with numpy. Either way the tenant filter
is in the SQL, so another tenant's rows are never read, let alone scored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import structlog
from sqlalchemy import delete, select

from celeriac.clock import utcnow
from celeriac.memory import pgvector
from celeriac.memory.chunking import chunk_text
from celeriac.store.database import Database
from celeriac.store.schema import MemoryChunk, Run

if TYPE_CHECKING:
    from celeriac.memory.embedder import Embedder
    from celeriac.memory.minilm import Vectors

log = structlog.get_logger(__name__)

DEFAULT_K = 5
# Completed runs indexed per search at most when catching up: bounds the first
# recall of a tenant with a long history (about 10 ms a passage).
CATCH_UP_LIMIT = 50
Backend = Literal["pgvector", "numpy"]


@dataclass(frozen=True)
class Hit:
    thread_id: str
    run_id: str
    text: str
    score: float  # cosine similarity, -1 to 1; unrelated English text is near 0.1


class MemoryIndex:
    """One per process (``Services.memory``); safe to share between threads.

    Construction does no I/O; the first ``remember`` or ``search`` loads the model
    and, on PostgreSQL, enables pgvector if the server offers it.
    """

    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        *,
        clock: Callable[[], datetime] = utcnow,
        use_pgvector: bool = True,
    ):
        self._db = db
        self._embedder = embedder
        self._clock = clock
        # False ranks in Python even where pgvector exists (and leaves the vector
        # column unwritten): for comparing the two, or a server where it misbehaves.
        self._use_pgvector = use_pgvector
        self._backend: Backend | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        """Where vectors are ranked; decided once per process, on first use."""
        backend = self._backend
        if backend is None:
            with self._lock:
                backend = self._backend
                if backend is None:
                    backend = self._backend = self._choose_backend()
        return backend

    def _choose_backend(self) -> Backend:
        if self._db.is_sqlite or not self._use_pgvector:
            return "numpy"
        with self._db.engine.begin() as conn:
            if not pgvector.enable(conn):
                return "numpy"
            filled = pgvector.backfill(conn)
        log.info("memory_backend", backend="pgvector", backfilled=filled)
        return "pgvector"

    def current_thread(self, tenant: str, run_id: str) -> str:
        """The thread a run belongs to as memory names it: the run's thread, or the
        run's own id for a run on no thread (a conversation of one turn). Pass the
        same to ``remember``, so that recall can leave the current thread out."""
        with self._db.reader() as session:
            thread_id = session.scalar(
                select(Run.thread_id).where(Run.id == run_id, Run.tenant == tenant)
            )
        return thread_id or run_id

    def remember(self, tenant: str, thread_id: str, run_id: str, text: str) -> int:
        """Index one finished turn (the user's input and the agent's answer, say);
        returns how many passages were stored. ``thread_id``: the run's thread, or
        the run's id when it has none (see ``current_thread``).

        Idempotent per ``(tenant, run_id)``: calling it again replaces that run's
        passages, so a redelivered task that remembers twice leaves one copy. The
        embedding (CPU, ~10 ms a passage) runs before the transaction opens, so
        SQLite's write lock is held only for the inserts.
        """
        import numpy as np

        backend = self.backend
        chunks = chunk_text(text)
        vectors = self._embedder.embed(chunks) if chunks else np.zeros((0, 0), np.float32)
        now = self._clock()
        with self._db.session() as session:
            session.execute(
                delete(MemoryChunk).where(
                    MemoryChunk.tenant == tenant, MemoryChunk.run_id == run_id
                )
            )
            rows = [
                MemoryChunk(
                    tenant=tenant,
                    thread_id=thread_id,
                    run_id=run_id,
                    seq=seq,
                    text=chunk,
                    model=self._embedder.name,
                    embedding=vector.astype("<f4").tobytes(),
                    created_at=now,
                )
                for seq, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True))
            ]
            session.add_all(rows)
            if backend == "pgvector":
                session.flush()  # assigns the ids the vector column is written by
                pgvector.write(session, [row.id for row in rows], vectors)
        return len(chunks)

    def remember_run(self, run_id: str) -> int:
        """Index a completed run as its turn: the user's input and the answer."""
        with self._db.reader() as session:
            run = session.get(Run, run_id)
            if run is None or run.status != "completed":
                return 0
            tenant, thread_id = run.tenant, run.thread_id or run.id
            text = f"User: {run.input}\n\nAssistant: {run.result or ''}"
        return self.remember(tenant, thread_id, run_id, text)

    def catch_up(self, tenant: str, *, limit: int = CATCH_UP_LIMIT) -> int:
        """Index the tenant's completed runs that memory has not seen, newest first:
        turns that finished before any agent used recall, or whose indexing message
        was lost. Called before every search, so what is done is searchable."""
        with self._db.reader() as session:
            seen = select(MemoryChunk.run_id).where(MemoryChunk.tenant == tenant)
            missing = list(
                session.scalars(
                    select(Run.id)
                    .where(Run.tenant == tenant, Run.status == "completed",
                           Run.id.not_in(seen))
                    .order_by(Run.finished_at.desc())
                    .limit(limit)
                )
            )
        for run_id in missing:
            self.remember_run(run_id)
        return len(missing)

    def search(
        self,
        tenant: str,
        query: str,
        k: int = DEFAULT_K,
        *,
        exclude_thread: str | None = None,
        min_score: float = -1.0,
    ) -> list[Hit]:
        """The ``k`` passages of ``tenant``'s memory closest to ``query``, best
        first, at most one per run (its best passage), none below ``min_score``."""
        if k < 1 or not query.strip():
            return []
        backend = self.backend
        wanted = self._embedder.embed([query])[0]
        if backend == "pgvector":
            with self._db.reader() as session:
                found = pgvector.search(
                    session,
                    tenant=tenant,
                    model=self._embedder.name,
                    query=wanted,
                    k=k,
                    exclude_thread=exclude_thread,
                    min_score=min_score,
                )
            return [Hit(*row) for row in found]
        return self._scan(tenant, wanted, k, exclude_thread, min_score)

    def _scan(
        self,
        tenant: str,
        wanted: Vectors,
        k: int,
        exclude_thread: str | None,
        min_score: float,
    ) -> list[Hit]:
        import numpy as np

        conditions = [MemoryChunk.tenant == tenant, MemoryChunk.model == self._embedder.name]
        if exclude_thread is not None:
            conditions.append(MemoryChunk.thread_id != exclude_thread)
        with self._db.reader() as session:
            rows = session.execute(
                select(MemoryChunk.id, MemoryChunk.run_id, MemoryChunk.embedding).where(*conditions)
            ).all()
        if not rows:
            return []
        matrix = np.frombuffer(b"".join(row.embedding for row in rows), dtype="<f4")
        scores = matrix.reshape(len(rows), self._embedder.dimensions) @ wanted
        best: dict[str, tuple[int, float]] = {}  # run id -> (chunk id, score)
        for i in np.argsort(-scores, kind="stable"):
            score = float(scores[i])
            if score < min_score or len(best) == k:
                break
            best.setdefault(rows[i].run_id, (rows[i].id, score))
        if not best:
            return []
        score_of = {chunk_id: score for chunk_id, score in best.values()}
        with self._db.reader() as session:
            chosen = session.execute(
                select(MemoryChunk).where(
                    MemoryChunk.id.in_(score_of), MemoryChunk.tenant == tenant
                )
            ).scalars()
            hits = [Hit(c.thread_id, c.run_id, c.text, score_of[c.id]) for c in chosen]
        hits.sort(key=lambda hit: hit.score, reverse=True)
        return hits

    def forget_thread(self, tenant: str, thread_id: str) -> int:
        """Drop a thread from memory (a tenant deleting a conversation)."""
        with self._db.session() as session:
            result = session.execute(
                delete(MemoryChunk).where(
                    MemoryChunk.tenant == tenant, MemoryChunk.thread_id == thread_id
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)
