"""results.json and RESULTS.md from one results document."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Goal:
    workload: str
    key: str
    op: str  # "<=" or ">="
    target: float
    unit: str = ""

    def met(self, value: object) -> bool | None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if not math.isfinite(value):
            return None
        return value <= self.target if self.op == "<=" else value >= self.target

    def text(self) -> str:
        return f"{self.op} {self.target:g}{(' ' + self.unit) if self.unit else ''}"


GOALS = (
    Goal("throughput", "ratio_to_bare", ">=", 0.9),
    Goal("overhead", "ratio_p50", "<=", 2),
    Goal("overhead", "celeriac_step_ms_p99", "<=", 10, "ms"),
    Goal("api", "submit_ms_p50", "<=", 5, "ms"),
    Goal("api", "submit_ms_p99", "<=", 15, "ms"),
    Goal("api", "errors", "<=", 0),
    Goal("slow_clients", "healthz_ms_p99", "<=", 100, "ms"),
    Goal("slow_clients", "submit_ms_p99", "<=", 100, "ms"),
    Goal("slow_clients", "errors", "<=", 0),
    Goal("memory", "worker_rss_mb", "<=", 300, "MB"),
    Goal("memory", "redis_growth_mb", "<=", 5, "MB"),
    Goal("rate_limit", "over_limit_attempts", "<=", 0),
    Goal("rate_limit", "provider_429", "<=", 0),
    Goal("rate_limit", "utilization", ">=", 0.97),
    Goal("rate_limit", "utilization_all_runs_min", ">=", 0.97),
    Goal("rate_limit", "provider_429_all_runs", "<=", 0),
    Goal("rate_limit", "unfinished_tasks", "<=", 0),
    Goal("budget", "overspend_usd", "<=", 0, "USD"),
)

# The figures shown in RESULTS.md, per workload, in order (results.json has them all).
SHOWN = {
    "throughput": ("tasks", "llm_steps_per_task", "tool_steps_per_task", "steps_per_s",
                   "bare_steps_per_s", "ratio_to_bare", "worker_cpu_ms_per_step",
                   "bare_worker_cpu_ms_per_step", "load_avg_1m"),
    "overhead": ("celeriac_step_ms_p50", "celeriac_step_ms_p99", "bare_celery_hop_ms_p50",
                 "bare_celery_hop_ms_p99", "ratio_p50", "celeriac_gap_ms_p50",
                 "bare_gap_ms_p50", "samples", "load_avg_1m"),
    "api": ("rps", "requests", "submit_ms_p50", "submit_ms_p99", "errors", "load_avg_1m"),
    "slow_clients": ("slow_connections", "open_streams", "held_open_at_end", "healthz_ms_p50",
                     "healthz_ms_p99", "submit_ms_p50", "submit_ms_p99", "errors",
                     "load_avg_1m"),
    "memory": ("in_flight", "worker_rss_mb", "worker_rss_idle_mb", "worker_threads",
               "redis_growth_mb", "redis_used_memory_growth_mb", "load_avg_1m"),
    "priority": ("backlog", "lows_waiting_at_first_high", "high_tasks", "high_start_ms_p50",
                 "low_start_ms_p50", "load_avg_1m"),
    "rate_limit": ("limit_rpm", "paced_rpm", "tasks", "calls", "workers", "achieved_rpm",
                   "utilization", "utilization_all_runs_min", "over_limit_requests",
                   "over_limit_attempts", "peak_attempts_in_window", "provider_429",
                   "provider_429_all_runs", "lag_ms_p99", "lag_ms_max",
                   "unfinished_tasks", "unfinished_tasks_all_runs",
                   "spread_across_workers", "window_s", "load_avg_1m"),
    "faults": ("fault_rate", "tasks", "completed_ratio", "attempts_per_success",
               "injected_faults", "load_avg_1m"),
    "budget": ("tasks", "cap_usd", "refused", "budget_failed", "completed",
               "provider_bill_usd", "ledger_usd", "overspend_usd", "load_avg_1m"),
}

DEFINITIONS = """\
- **throughput**: N tasks queued up front, each llm -> tool -> llm -> tool -> llm (the
  simulator's `[loop]` script with an agent of `max_steps = 3`; Celeriac ends these runs
  as `failed: max_steps_exceeded` after the fifth step, see `run_statuses` in
  results.json), simulator latency 200 ms, no provider limit. steps/s = completed steps /
  (last step end - first step start). The baseline (`bench/bare.py`) runs the same chain
  as plain Celery tasks calling the same simulator through the same Anthropic SDK, with
  the conversation in the message, on the same pool, worker count and concurrency.
  CPU ms/step: worker processes' CPU time / steps.
- **overhead**: latency 0, one task at a time. A step's orchestration time = end of its
  call - end of the previous step's call - its own call time (`steps.latency_ms`; for
  the baseline the same instants measured in the task), for steps 2-5 of each task.
  "gap" = previous step's end to this step's start (`started_at`) only.
- **api**: `POST /agent/run` to gunicorn run as the Procfile's `web:` line, 200
  requests/s on a fixed schedule (open loop), latency from the scheduled send time to
  the end of the response; errors = anything but 202. No workers; throwaway Redis
  database and store.
- **slow_clients**: gunicorn as the Procfile's `web:` line, no worker; 1,000 slow or
  idle connections (a third each: an unfinished header, a body announced as 1 kB of
  which 10 bytes came, nothing at all) and 500 event streams of a queued task are
  opened and held; then `GET /healthz` and `POST /agent/run` are timed one at a time,
  each on a new connection (errors: no answer in 10 s, or another status).
  `held_open_at_end`: the held connections the server had not closed when timing ended.
- **memory**: one worker, threads pool, one thread per agent; agents wait 300 s on the
  simulator. `in_flight` = provider calls open at the peak (TCP connections to the
  simulator, cross-checked with running steps). Peak RSS of the worker process; Redis
  growth = MEMORY USAGE of the workload's database keys (`redis_used_memory_growth_mb`:
  the whole server's `used_memory`, noisy on a shared server).
- **priority**: one worker with 8 threads, 200 ms latency; the low backlog is submitted,
  then high tasks one every 100 ms; start = `runs.started_at - runs.created_at`.
- **rate_limit**: tasks of 3 LLM calls (the throughput `[loop]` task) queued up front
  against the simulator started with `--rpm L` (a rolling 60 s window, 429 past it) and
  Celeriac's limiter set to the same L for the bench model (`CELERIAC_LIMITS`), 200 ms
  latency; run once per worker-process count (`by_workers` in results.json; the
  headline is 2 workers, `spread_across_workers` = (max - min) / mean of their achieved
  RPM). From the simulator's request log: achieved RPM = (accepted calls - 1) / (last
  accepted - first accepted) x 60; `over_limit_requests` = max over rolling windows of
  `window_s` of accepted calls minus L x window_s / 60, floored at 0 (the simulator
  never accepts more than L per 60 s, so over 60 s this is 0 by construction);
  `over_limit_attempts` = the same over every request that reached the simulator,
  429s included (what a real provider would have seen over its limit);
  `provider_429` = the simulator's refusals at 2 workers (`_all_runs`: every worker
  count); `utilization` = achieved RPM / L at 2 workers (`_all_runs_min`: the lowest of
  every worker count); it cannot pass `paced_rpm` / L, the pace Celeriac's limiter
  keeps below L (the burst and `jitter_s` of calls). Every call carries its limiter
  slot (`x-celeriac-slot`), which the simulator logs: `lag_ms_*` = arrival - slot
  (2 workers; `lag_ms_max`: every worker count), `peak_attempts_in_window` = the most
  requests that reached the simulator in any `window_s` (every worker count), to set
  beside `peak_granted_in_window` in `by_workers` (slots granted in any window).
  Each worker count is given at most 30 s + 1.4 x the ideal backlog time;
  `unfinished_tasks` = runs not ended by then. Quick and tiny runs last less than
  60 s, so their window is scaled down (`window_s`). One repetition (it runs each
  worker count itself).
- **faults**: the default agent (retries, then the fallbacks sonnet -> haiku ->
  gpt-4o-mini) on arithmetic questions (llm -> tool -> llm); every provider call of a
  task gets a random 429/500/503/529 with probability `fault_rate` (the task's
  `metadata.simulator.fault_rate`, all models); 2 workers, 50 ms latency.
  `completed_ratio` = completed runs / tasks; `attempts_per_success` = requests in the
  simulator's log / those answered 200. One repetition.
- **budget**: `CELERIAC_BUDGETS` daily_usd = tenant_daily_usd = `cap_usd`; 2 workers
  started, then every task submitted at once: an arithmetic question padded to ~8,000
  characters on claude-sonnet-4 (about $0.0155 a task, so the tasks would cost several
  times the cap unbudgeted). `refused` = submissions answered 429; `budget_failed` =
  runs ended with a budget error code; `provider_bill_usd` = the simulator's 200s
  priced with config/prices.toml; `ledger_usd` = sum of `ledger.cost_nanos`;
  `overspend_usd` = max(0, bill - cap). One repetition.
- **load_avg_1m**: the machine's 1-minute load average (the higher of before and after
  each repetition); this 2-core machine is shared, and a load above 2 means other
  processes competed for the CPU during that measurement.
"""


def clean(value: Any) -> Any:
    """NaN and infinities become null: results.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def write(out_dir: Path, doc: dict[str, Any], *, command: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.json"
    results.write_text(json.dumps(clean(doc), indent=2) + "\n")
    markdown = out_dir / "RESULTS.md"
    markdown.write_text(render(clean(doc), command=command))
    return results, markdown


def render(doc: dict[str, Any], *, command: str) -> str:
    run = doc.get("run", {})
    machine, versions = doc.get("machine", {}), doc.get("versions", {})
    repeats = run.get("repeats", 1)
    lines = [
        "# Celeriac benchmark results",
        "",
        f"`{command}` (size `{run.get('size')}`, finished {run.get('finished_at')}, "
        f"{run.get('duration_s')} s). Each figure is the median of {repeats} "
        f"repetition{'s' if repeats != 1 else ''} (api errors: the sum); every repetition "
        "is in `results.json`.",
        "",
        f"- **Machine**: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('ram_gb')} GB RAM, {machine.get('os')}, Python "
        f"{machine.get('python')}; load average {machine.get('load_avg_1m_at_start')} at "
        "the start (the machine is shared, so figures are noisy).",
        "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- **Configuration**: {run.get('workers')} worker process(es) x "
        f"{run.get('concurrency')} threads (`celery worker -P {run.get('pool')} -Q "
        "high,default,low --without-mingle --without-gossip -l INFO`) for throughput and "
        f"overhead, Celeriac and baseline alike; store {run.get('store')} (a fresh one per "
        f"workload); Redis: {run.get('redis')}, one database per workload, flushed "
        "before it; the simulator (`python -m simulator`) and gunicorn (the "
        "Procfile's `web:` line) as their own processes; Celeriac's provider rate limiter "
        "on, with the bench model's limit raised out of reach (`CELERIAC_LIMITS`).",
        *_reruns(run.get("reruns", [])),
        "",
        "| workload | figure | value | goal | |",
        "| --- | --- | ---: | --- | --- |",
    ]
    goals = {(g.workload, g.key): g for g in GOALS}
    skipped: list[str] = []
    for name, result in doc.items():
        if name in ("machine", "versions", "run") or not isinstance(result, dict):
            continue
        if "skipped" in result or "error" in result:
            why = result.get("skipped") or f"error: {result.get('error')}"
            skipped.append(f"- **{name}**: {why}")
            continue
        for key in SHOWN.get(name, tuple(k for k in result if k not in ("each",))):
            if key not in result:
                continue
            goal = goals.get((name, key))
            verdict = ""
            if goal is not None:
                met = goal.met(result[key])
                verdict = {True: "met", False: "**missed**", None: "n/a"}[met]
            lines.append(
                f"| {name} | {key} | {_fmt(result[key])} | "
                f"{goal.text() if goal else ''} | {verdict} |"
            )
    lines += ["", "## Not measured", "", *(skipped or ["- nothing"]), "",
              "## Definitions", "", DEFINITIONS]
    return "\n".join(lines)


def _reruns(reruns: list[dict[str, Any]]) -> list[str]:
    """Workloads measured again later, on their own, with the rest kept as they were."""
    return [
        f"- **Re-run**: `{', '.join(r.get('workloads', []))}` only, with `{r.get('command')}` "
        f"(finished {r.get('finished_at')}, celeriac {r.get('commit')}, load average "
        f"{r.get('load_avg_1m_at_start')} at the start); the other workloads' figures come "
        f"from the run above. {r.get('note', '')}".rstrip()
        for r in reruns
    ]


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
