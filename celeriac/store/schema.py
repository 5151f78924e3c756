"""Tables. Money is stored as integer nano-dollars so that sums are exact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

TERMINAL_STATUSES = ("completed", "failed", "cancelled")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    """One agent task, as the API calls it."""

    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_runs_idempotency"),
        Index("ix_runs_tenant_created", "tenant", "created_at"),
        Index("ix_runs_status_updated", "status", "updated_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    agent: Mapped[str] = mapped_column(String(64))
    agent_version: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    priority_level: Mapped[int] = mapped_column(default=5)
    input: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    max_steps: Mapped[int] = mapped_column(default=10)
    max_tokens: Mapped[int] = mapped_column(default=1024)
    budget_usd: Mapped[float] = mapped_column(default=1.0)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    # sha256 of the accepted request (celeriac.execution.submission.fingerprint): a key reused
    # with a different request is refused, not answered with this task. NULL on runs
    # accepted before it was kept: those match any request, as they always did.
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    # The conversation this task continues, and its place in it (1, 2, ...): a task
    # starts only when every earlier task of its thread has ended.
    thread_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    thread_seq: Mapped[int] = mapped_column(default=0)
    steps_done: Mapped[int] = mapped_column(default=0)
    # Tool steps of the current turn still outstanding: the join counter.
    pending_tools: Mapped[int] = mapped_column(default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    # Bumped on every visible change; the SSE stream uses it as the event id.
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # The task's wall-clock limit: past it, no further step starts and the reaper
    # ends the run, so nothing stays running forever.
    deadline_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    steps: Mapped[list[Step]] = relationship(
        back_populates="run", order_by="Step.seq", cascade="all, delete-orphan"
    )

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Thread(Base):
    """A conversation: the tasks submitted with its id, in order, are its turns.

    The turns themselves are not copied here: they are the completed tasks' steps,
    so there is one copy of every message and nothing to keep in step."""

    __tablename__ = "threads"
    __table_args__ = (Index("ix_threads_tenant_updated", "tenant", "updated_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default="default")
    # Tasks submitted on the thread so far: the next one gets turns + 1 as thread_seq.
    turns: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Step(Base):
    """One LLM call or one tool call. Its id is also its Celery task id."""

    __tablename__ = "steps"
    __table_args__ = (
        UniqueConstraint("run_id", "seq", name="uq_steps_run_seq"),
        Index("ix_steps_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    seq: Mapped[int]
    turn: Mapped[int]
    kind: Mapped[str] = mapped_column(String(8))  # "llm" | "tool"
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    tool_call_id: Mapped[str | None] = mapped_column(String(128), default=None)
    arguments: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    model: Mapped[str | None] = mapped_column(String(64), default=None)
    # Position reached in the agent's model chain, and why it moved past the first.
    chain_index: Mapped[int] = mapped_column(default=0)
    fallback_reason: Mapped[str | None] = mapped_column(String(32), default=None)
    cached: Mapped[bool] = mapped_column(default=False)
    # The budget reservation held by the call in flight ({id, day, tenant, amount}):
    # if Redis loses its data, budget counters are rebuilt with these still held.
    reservation: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    attempt_log: Mapped[list[Any]] = mapped_column(JSON, default=list)
    deliveries: Mapped[int] = mapped_column(default=0)
    # When its message was handed to the broker: a step created but never sent (its
    # sender died between commit and send) is re-sent by the reaper within seconds.
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # Times the step was taken back from a worker that died or hung mid-step.
    recoveries: Mapped[int] = mapped_column(default=0)
    latency_ms: Mapped[float | None] = mapped_column(default=None)
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cost_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)

    run: Mapped[Run] = relationship(back_populates="steps")


class LedgerEntry(Base):
    """One settled cost: the record budgets are rebuilt from and usage is read from."""

    __tablename__ = "ledger"
    __table_args__ = (
        Index("ix_ledger_day_tenant", "day", "tenant"),
        Index("ix_ledger_day_model", "day", "model"),
        UniqueConstraint("step_id", name="uq_ledger_step_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    # One row per step: a step pays for one answer. A rerun after its worker died
    # records the journaled answer (celeriac.durability.journal) instead of paying again. A call
    # a worker died with on the wire was billed too: it has a row of its own, marked
    # "<step>#w<wire id>" and charged at its reservation (celeriac.durability.lost_calls).
    step_id: Mapped[str] = mapped_column(String(64))
    reservation_id: Mapped[str] = mapped_column(String(160), unique=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    tenant: Mapped[str] = mapped_column(String(64))
    day: Mapped[str] = mapped_column(String(10))  # in the budget time zone
    model: Mapped[str] = mapped_column(String(64))
    provider: Mapped[str] = mapped_column(String(32))
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cache_write_tokens: Mapped[int] = mapped_column(default=0)
    cache_read_tokens: Mapped[int] = mapped_column(default=0)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    cached: Mapped[bool] = mapped_column(default=False)
    price_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKey(Base):
    """An API key: its SHA-256 digest, never the key."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class MemoryChunk(Base):
    """A passage of a finished turn and its embedding, for the recall tool.

    Keyed by run so that remembering a run again (a redelivered task) replaces its
    passages instead of doubling them. Not tied to ``runs`` by a foreign key: what a
    tenant said is meant to be recalled after the run itself is cleaned up.
    """

    __tablename__ = "memory_chunks"
    __table_args__ = (
        UniqueConstraint("tenant", "run_id", "seq", name="uq_memory_run_seq"),
        Index("ix_memory_tenant_model", "tenant", "model"),
        Index("ix_memory_tenant_thread", "tenant", "thread_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    thread_id: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(64))  # the embedder that made the vector
    # float32, little-endian, the embedder's dimensions: portable across SQLite and
    # PostgreSQL without an extension (see celeriac/memory/index.py).
    embedding: Mapped[bytes]  # LargeBinary: BLOB on SQLite, bytea on PostgreSQL
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
