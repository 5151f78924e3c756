"""MemoryIndex on real stores (SQLite and PostgreSQL) with the real model: the right
earlier thread for a paraphrased question, and never another tenant's text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from celeriac.memory import MemoryIndex, MiniLMEmbedder, chunk_text
from celeriac.store import Database, migrate
from celeriac.store.schema import MemoryChunk
from tests.support.memory import QUESTIONS, STORES, THREADS, open_store


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()  # loaded once per module, on first use


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(kind: str, tmp_path: Path) -> Iterator[Database]:
    with open_store(kind, tmp_path) as store:
        yield store


@pytest.fixture
def pgvector_db(tmp_path: Path) -> Iterator[Database]:
    with open_store("pgvector", tmp_path) as store:
        yield store


@pytest.fixture
def index(db: Database, embedder: MiniLMEmbedder) -> MemoryIndex:
    return MemoryIndex(db, embedder)


def remember_all(index: MemoryIndex, tenant: str) -> None:
    for thread_id, text in THREADS.items():
        index.remember(tenant, thread_id, f"{tenant}-run-{thread_id}", text)


def count_rows(db: Database) -> int:
    with db.reader() as session:
        return int(session.scalar(select(func.count()).select_from(MemoryChunk)) or 0)


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_a_paraphrased_question_finds_its_thread(index: MemoryIndex, question: str) -> None:
    remember_all(index, "acme")
    hits = index.search("acme", question, k=len(THREADS))
    assert hits[0].thread_id == QUESTIONS[question]
    assert hits[0].text == THREADS[QUESTIONS[question]]
    assert hits[0].run_id == f"acme-run-{QUESTIONS[question]}"
    # Ranked, one hit per run, and the right one clearly ahead of the rest.
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.run_id for h in hits}) == len(hits) == len(THREADS)
    assert hits[0].score - hits[1].score > 0.1


def test_another_tenants_best_match_is_never_returned(index: MemoryIndex) -> None:
    question = "Why did the release break and what did we do about it?"
    remember_all(index, "acme")
    # The other tenant holds the question word for word: the best match there is.
    index.remember("globex", "g-deploy", "globex-run-1", question + " It broke on Friday.")
    index.remember("globex", "g-other", "globex-run-2", THREADS["t-lunch"])

    acme = index.search("acme", question, k=50)
    assert acme and acme[0].thread_id == "t-deploy"
    assert not {h.thread_id for h in acme} & {"g-deploy", "g-other"}
    assert all(h.run_id.startswith("acme-") for h in acme)

    globex = index.search("globex", question, k=50)
    assert globex[0].thread_id == "g-deploy"
    assert globex[0].score > acme[0].score  # it really was the better match
    assert {h.thread_id for h in globex} == {"g-deploy", "g-other"}

    assert index.search("initech", question) == []  # a tenant with no memory


def test_remembering_a_run_again_replaces_it(index: MemoryIndex, db: Database) -> None:
    index.remember("acme", "t-deploy", "run-1", THREADS["t-deploy"])
    index.remember("acme", "t-deploy", "run-1", THREADS["t-deploy"])  # a redelivery
    assert count_rows(db) == 1
    index.remember("acme", "t-deploy", "run-1", THREADS["t-lunch"])  # corrected text
    hits = index.search("acme", "lasagne for the team", k=5)
    assert [(h.run_id, h.text) for h in hits] == [("run-1", THREADS["t-lunch"])]
    # The same run id under another tenant is another memory, untouched.
    index.remember("globex", "g", "run-1", THREADS["t-invoice"])
    assert count_rows(db) == 2
    assert index.search("acme", "lasagne for the team")[0].text == THREADS["t-lunch"]


def test_a_fact_deep_in_a_long_turn_is_found_in_its_own_passage(index: MemoryIndex) -> None:
    filler = " ".join(f"Line {i} of the quarterly plan says nothing new." for i in range(60))
    fact = "The staging database password rotation now happens every ninety days."
    text = f"{filler} {fact} {filler}"
    assert len(chunk_text(text)) > 4
    stored = index.remember("acme", "t-long", "run-long", text)
    assert stored == len(chunk_text(text))
    index.remember("acme", "t-lunch", "run-lunch", THREADS["t-lunch"])

    hits = index.search("acme", "how often are credentials for the test environment changed?")
    assert hits[0].thread_id == "t-long"
    assert fact in hits[0].text  # the passage holding the fact, not the first one
    assert len(hits[0].text) < len(text) / 3


def test_exclude_thread_min_score_and_limits(index: MemoryIndex) -> None:
    remember_all(index, "acme")
    question = "Why did the release break and what did we do about it?"
    hits = index.search("acme", question, k=10, exclude_thread="t-deploy")
    assert hits and "t-deploy" not in {h.thread_id for h in hits}
    assert index.search("acme", question, k=10, min_score=0.2)[0].thread_id == "t-deploy"
    assert all(h.score >= 0.2 for h in index.search("acme", question, k=10, min_score=0.2))
    assert index.search("acme", "the weather in Paris", min_score=0.2) == []
    assert len(index.search("acme", question, k=2)) == 2
    assert index.search("acme", "   ") == []
    assert index.search("acme", question, k=0) == []
    assert index.remember("acme", "t-empty", "run-empty", "  \n ") == 0


def test_forget_thread(index: MemoryIndex, db: Database) -> None:
    remember_all(index, "acme")
    remember_all(index, "globex")
    assert index.forget_thread("acme", "t-deploy") == 1
    hits = index.search("acme", "Why did the release break?", k=10)
    assert "t-deploy" not in {h.thread_id for h in hits}
    assert index.search("globex", "Why did the release break?")[0].thread_id == "t-deploy"
    assert count_rows(db) == 2 * len(THREADS) - 1


def test_vectors_of_another_model_are_not_compared(index: MemoryIndex, db: Database) -> None:
    remember_all(index, "acme")
    with db.session() as session:  # as if the embedder had been swapped since
        session.execute(MemoryChunk.__table__.update().values(model="older-model"))
    assert index.search("acme", "Why did the release break?") == []


def test_chunking() -> None:
    assert chunk_text("") == [] and chunk_text(" \n\t") == []
    assert chunk_text("one two three") == ["one two three"]
    words = [f"w{i}" for i in range(10)]
    chunks = chunk_text(" ".join(words), size=4, overlap=1)
    assert chunks == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert chunk_text(" ".join(words[:4]), size=4, overlap=1) == ["w0 w1 w2 w3"]
    with pytest.raises(ValueError):
        chunk_text("x", size=4, overlap=4)


def test_the_backend_is_what_the_store_offers(index: MemoryIndex, db: Database, kind: str) -> None:
    if kind == "postgres":  # the machine's server: pgvector if its packages have it
        with db.engine.connect() as conn:
            offered = conn.exec_driver_sql(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
            ).scalar()
        assert index.backend == ("pgvector" if offered else "numpy")
    else:
        assert index.backend == {"sqlite": "numpy", "pgvector": "pgvector"}[kind]


@pytest.mark.postgres
def test_pgvector_ranks_as_numpy_does(pgvector_db: Database, embedder: MiniLMEmbedder) -> None:
    index = MemoryIndex(pgvector_db, embedder)
    assert index.backend == "pgvector"
    remember_all(index, "acme")
    remember_all(index, "globex")
    with pgvector_db.engine.connect() as conn:  # the run-time column is no drift
        assert "embedding_vec" in {c["name"] for c in inspect(conn).get_columns("memory_chunks")}
        assert migrate.differences(conn) == []
    in_python = MemoryIndex(pgvector_db, embedder, use_pgvector=False)
    assert in_python.backend == "numpy"
    for question in QUESTIONS:
        for exclude, floor in ((None, -1.0), ("t-deploy", -1.0), (None, 0.2)):
            sql = index.search("acme", question, k=3, exclude_thread=exclude, min_score=floor)
            py = in_python.search("acme", question, k=3, exclude_thread=exclude, min_score=floor)
            assert sql, question
            assert [(h.thread_id, h.run_id, h.text) for h in sql] == [
                (h.thread_id, h.run_id, h.text) for h in py
            ]
            assert [h.score for h in sql] == pytest.approx([h.score for h in py], abs=1e-5)
            assert all(h.run_id.startswith("acme-") for h in sql)


@pytest.mark.postgres
def test_passages_stored_before_pgvector_are_backfilled(
    pgvector_db: Database, embedder: MiniLMEmbedder
) -> None:
    remember_all(MemoryIndex(pgvector_db, embedder), "acme")
    with pgvector_db.engine.begin() as conn:  # as if written before the extension existed
        conn.exec_driver_sql("ALTER TABLE memory_chunks DROP COLUMN embedding_vec")
    fresh = MemoryIndex(pgvector_db, embedder)  # the next process start
    assert fresh.backend == "pgvector"
    with pgvector_db.engine.connect() as conn:
        missing = conn.exec_driver_sql(
            "SELECT count(*) FROM memory_chunks WHERE embedding_vec IS NULL"
        ).scalar()
    assert missing == 0
    hits = fresh.search("acme", "Who takes the pager while she is away?")
    assert hits[0].thread_id == "t-vacation"
