"""Request and response schemas. The same models validate requests and generate
``/openapi.json``, so the document cannot drift from the code."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from celeriac.errors import InvalidRequest

PriorityName = Literal["high", "normal", "low"]


def _json_integer(value: Any) -> Any:
    """JSON has one number type: 4.0 is the integer 4 (as JSON Schema says), but a
    bool or a string is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


PriorityLevel = Annotated[int, BeforeValidator(_json_integer), Field(ge=0, le=9)]
Status = Literal["queued", "running", "completed", "failed", "cancelled"]


# http(s), a host name of DNS labels (1-63 characters) or a bracketed IPv6 literal,
# an optional port, then anything without spaces.
WEBHOOK_URL = (
    r"^https?://(\[[0-9A-Fa-f:.]+\]|([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63})"
    r"(:[0-9]{1,5})?([/?#][^\s]*)?$"
)


# Printable ASCII: a header value, and a key the store can hold on every backend.
IDEMPOTENCY_KEY_PATTERN = r"^[ -~]{1,255}$"
# An event id is a run's version: ASCII digits, few enough to fit a 64-bit integer.
# Empty (or absent) means from the start.
LAST_EVENT_ID_PATTERN = r"^[0-9]{0,18}$"


def parse_last_event_id(header: str | None, query: str | None = None) -> int:
    """Where an event stream resumes: the ``Last-Event-ID`` header of a reconnect, or
    the ``last_event_id`` query of a client that cannot set headers (the header wins);
    0 when neither is given. Both are checked: only ASCII digits (``str.isdigit``
    also takes "١٢" and "²", and ``int()`` raises past 4,300 digits)."""
    for raw in (query, header):
        if raw is not None and not re.fullmatch(LAST_EVENT_ID_PATTERN, raw):
            raise InvalidRequest("Last-Event-ID must be an event id: up to 18 ASCII digits",
                                 field="Last-Event-ID")
    return int(header or query or "0")


class RunRequest(BaseModel):
    """Submit an agent task."""

    model_config = ConfigDict(extra="forbid", title="RunRequest")

    input: Annotated[StrictStr, Field(min_length=1, description="The user's message")]
    agent: Annotated[StrictStr, Field(min_length=1, max_length=100)] = "default"
    model: Annotated[StrictStr, Field(min_length=1, max_length=100)] | None = None
    priority: PriorityName | PriorityLevel | None = Field(
        None, description="high, normal, low, or 0-9 where 9 is the most urgent"
    )
    budget_usd: Annotated[StrictFloat | StrictInt, Field(gt=0, le=1000)] | None = None
    webhook_url: Annotated[StrictStr, Field(max_length=2000, pattern=WEBHOOK_URL)] | None = Field(
        None,
        description="http(s) URL signed webhooks go to; private and loopback addresses "
        "are refused unless allow-listed",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    thread_id: Annotated[
        StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    ] | None = Field(
        None,
        description="Continue this conversation (its earlier turns are loaded); "
        "without it a new thread is started",
    )


class RunAccepted(BaseModel):
    task_id: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    status_url: str
    thread_id: str
    thread_url: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cost_usd: float


class StepView(BaseModel):
    id: str
    kind: Literal["llm", "tool", "summary"]
    name: str
    status: str
    latency_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float
    attempts: int
    model: str | None
    fallback_reason: str | None = None
    cached: bool = False
    attempt_log: list[dict[str, Any]] = Field(default_factory=list)
    error: dict[str, str | None] | None
    arguments: dict[str, Any] | None = None
    output: str | None = None


class RunStatus(BaseModel):
    task_id: str
    status: Status
    progress: Annotated[int, Field(ge=0, le=100)]
    result: str | None
    error: dict[str, str | None] | None
    usage: Usage
    model: str
    agent: str
    agent_version: str
    priority: PriorityName
    budget_usd: float
    metadata: dict[str, Any]
    created_at: str
    updated_at: str
    finished_at: str | None
    version: int
    thread_id: str | None
    steps: list[StepView]


class ThreadTurn(BaseModel):
    task_id: str
    status: Status
    input: str
    result: str | None
    error: dict[str, str | None] | None
    usage: Usage
    created_at: str
    finished_at: str | None


class ThreadView(BaseModel):
    thread_id: str
    created_at: str
    updated_at: str
    usage: Usage
    turns: list[ThreadTurn]


class TaskSummary(BaseModel):
    task_id: str
    status: Status
    agent: str
    model: str
    priority: PriorityName
    input: str
    cost_usd: float
    created_at: str
    updated_at: str


class TaskList(BaseModel):
    items: list[TaskSummary]
    total: int
    limit: int
    offset: int


class AgentVersionView(BaseModel):
    version: str
    weight: int
    model: str
    fallbacks: list[str]
    tools: list[str]
    max_steps: int


class AgentView(BaseModel):
    name: str
    description: str
    pinned: str | None
    versions: list[AgentVersionView]


class AgentList(BaseModel):
    agents: list[AgentView]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


class CircuitView(BaseModel):
    state: Literal["closed", "half_open", "open"]
    consecutive_failures: int
    opened_at: float | None


class ModelLimitsView(BaseModel):
    rpm: int
    tpm: int


class ProviderModelView(BaseModel):
    model: str
    provider: str
    configured: bool
    priced: bool
    limits: ModelLimitsView
    circuit: CircuitView
    paused_for_s: float
    pace_factor: float


class ProviderList(BaseModel):
    simulated: bool
    models: list[ProviderModelView]


class UsageItem(BaseModel):
    day: str
    tenant: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


class BudgetView(BaseModel):
    cap_usd: float | None
    spent_usd: float
    reserved_usd: float
    remaining_usd: float | None


class BudgetsView(BaseModel):
    day: str
    timezone: str
    resets_at: str
    tenant: BudgetView
    global_: BudgetView = Field(alias="global")
    max_task_usd: float


class UsageReport(BaseModel):
    since: str
    until: str
    items: list[UsageItem]
    total_cost_usd: float
    budgets: BudgetsView
