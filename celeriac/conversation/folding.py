"""Folding a conversation that outgrows the context window (see ``celeriac.conversation.window``).

Before an LLM call the loop measures the prompt; when it is over the window, the
step is parked and a *summary step* (its own Celery task, priced and written to the
ledger like any call) folds the older turns with the chain's cheapest model, then
sends the parked step again. This mixin holds those two step kinds' logic; the
state it needs (store, caller, catalog, observer) and ``_call`` are the loop's.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from celeriac.accounting.pricing import price_of
from celeriac.catalog import AgentVersion, Catalog, ModelSpec
from celeriac.clock import utcnow
from celeriac.conversation.history import Prompt
from celeriac.conversation.messages import user_text
from celeriac.conversation.window import (
    CHARS_PER_TOKEN,
    SUMMARY_HEADER,
    Measure,
    Window,
    choose_fold,
    transcript,
)
from celeriac.errors import CeleriacError
from celeriac.execution.claims import Claim, Dispatch, Outcome, dispatch_for, touch
from celeriac.execution.step_ids import new_step, summary_step_id
from celeriac.gateway.caller import Caller
from celeriac.gateway.providers.base import LLMRequest
from celeriac.observability.observer import Observer
from celeriac.store import Database, Run, Step

log = structlog.get_logger("celeriac.execution.loop")


class ContextFolding:
    """The context-window part of ``AgentLoop`` (a mixin: see the module's doc)."""

    db: Database
    caller: Caller
    catalog: Callable[[], Catalog]
    observer: Observer

    def _call(
        self,
        step_id: str,
        claim: Claim,
        chain: list[ModelSpec],
        start: int,
        build: Callable[[ModelSpec], LLMRequest],
        cache_ttl_s: int,
    ) -> Outcome:
        raise NotImplementedError  # AgentLoop's

    def _headers(
        self, step_id: str, turn: int, model: str, meta: dict[str, object]
    ) -> dict[str, str]:
        raise NotImplementedError  # AgentLoop's

    def _count_tokens(self, request: LLMRequest) -> int | None:
        """The provider's own count of a prompt, where its SDK offers one; None
        otherwise, or when counting fails (the estimate is used instead)."""
        try:
            model = self.catalog().model(request.model)
            return self.caller.providers.for_model(model).count_tokens(request)
        except Exception as exc:  # a failed count must not fail the step
            log.warning("count_tokens_failed", model=request.model, error=repr(exc))
            return None

    def _fold(
        self,
        step_id: str,
        claim: Claim,
        version: AgentVersion,
        chain: list[ModelSpec],
        prompt: Prompt,
        tools: list[dict[str, object]],
        window: Window,
        size: Measure,
    ) -> Outcome:
        """The prompt is over the window: create a summary step for the older turns
        and park this step until it is done; or fail if nothing can make it fit."""
        how = "counted" if size.exact else "estimated"
        sizes = (
            f"the prompt is {size.tokens} tokens ({how}); the context window is "
            f"{window.context_window} with max_tokens {window.max_tokens} reserved, "
            f"so {window.limit} are left for the prompt"
        )
        summary_id = summary_step_id(claim.run_id, claim.turn)
        cheap = min(chain, key=_price_rank)
        with self.db.reader() as s:
            done = s.scalar(select(Step.status).where(Step.id == summary_id)) == "completed"
        point = None
        if not done:  # one fold per turn: a second would mean the fold did not help
            point = choose_fold(
                version.system_prompt,
                tools,
                prompt.full,
                window,
                start=prompt.covers + 1,
                summary_allowance=min(SUMMARY_MAX_TOKENS, cheap.max_output_tokens),
            )
        if point is None:
            raise CeleriacError(
                f"context window exceeded: {sizes}; even the latest exchange with a "
                f"summary of the rest does not fit",
                code="context_window_exceeded",
            )
        now = utcnow()
        with self.db.session() as s:
            step = s.get(Step, step_id, with_for_update=True)
            run = s.get(Run, claim.run_id, with_for_update=True)
            if step is None or run is None or step.status != "running" or run.terminal:
                return Outcome("duplicate")
            summary = s.get(Step, summary_id, with_for_update=True)
            if summary is None:
                summary = new_step(
                    run.id,
                    turn=claim.turn,
                    kind="summary",
                    name=cheap.id,
                    index=0,
                    now=now,
                    arguments={"covers": point, "for_step": step_id},
                )
                s.add(summary)
            # Parked: the summary step sends it again when it is done (and, should that
            # message be lost, the reaper re-sends a pending step long past its sending).
            step.status, step.lease_until, step.sent_at = "pending", None, now
            touch(run, now)
            dispatch = [dispatch_for(summary, run)] if summary.status == "pending" else []
        log.info(
            "context_fold",
            run_id=claim.run_id,
            step=step_id,
            covers=point,
            messages=len(prompt.full),
            tokens=size.tokens,
            limit=window.limit,
        )
        self.observer.count("context_fold", {"model": chain[0].id})
        return Outcome("executed", dispatch)

    def _run_summary(
        self,
        step_id: str,
        claim: Claim,
        chain: list[ModelSpec],
        prompt: Prompt,
        meta: dict[str, object],
    ) -> Outcome:
        """Fold ``prompt.full[:covers]`` (after any earlier summary) into a summary,
        made by the cheapest model of the agent's chain, then the others by price."""
        arguments = dict(claim.tool_call_args or {})
        covers = int(str(arguments["covers"]))
        folded = prompt.full[prompt.covers : covers]
        by_price = sorted(chain, key=_price_rank)

        def build(model: ModelSpec) -> LLMRequest:
            price_of(model)
            max_tokens = min(SUMMARY_MAX_TOKENS, model.max_output_tokens)
            # Leave room for the instructions and the answer in the summarizer's window.
            room = int((model.context_window - max_tokens) * CHARS_PER_TOKEN * 0.8)
            earlier = f"{SUMMARY_HEADER}\n{prompt.summary}\n\n" if prompt.summary else ""
            body = earlier + transcript(folded, limit_chars=max(1000, room - len(earlier)))
            return LLMRequest(
                model=model.id,
                system=SUMMARIZER_SYSTEM,
                messages=[user_text(f"{SUMMARIZE_REQUEST}\n\n{body}")],
                tools=[],
                max_tokens=max_tokens,
                headers=self._headers(step_id, claim.turn, model.id, meta),
            )

        return self._call(step_id, claim, by_price, 0, build, cache_ttl_s=0)


def summary_done(s: Session, step: Step, run: Run, text: str) -> list[Dispatch]:
    """Keep the summary on its step and send the parked LLM step again."""
    arguments = dict(step.arguments or {})
    step.output = {**(step.output or {}), "summary": text, "covers": int(arguments["covers"])}
    parked = s.get(Step, str(arguments["for_step"]), with_for_update=True)
    if run.terminal or parked is None or parked.status != "pending":
        return []
    # Unsent until the broker has it: if we die before sending, the reaper sends it.
    parked.sent_at = None
    return [dispatch_for(parked, run)]


def window_for(chain: list[ModelSpec], max_tokens: int) -> Window:
    """Any model left in the chain may serve the call, so the prompt must fit every
    one of them: each with its own window, less the ``max_tokens`` it will be asked
    for (capped at its output limit, as the request is). The tightest is not always
    the smallest window: a fallback with a little more room may reserve much more."""
    windows = [Window(m.context_window, min(max_tokens, m.max_output_tokens)) for m in chain]
    return min(windows, key=lambda w: w.limit)


def _price_rank(model: ModelSpec) -> float:
    price = price_of(model)
    return price.input + price.output


# The summary step: its instructions, and the room it may take in the next prompt.
SUMMARY_MAX_TOKENS = 1024
SUMMARIZER_SYSTEM = (
    "You compress conversations between a user and an AI agent. Write a faithful, "
    "compact summary in plain text: every fact the user stated, names, numbers, "
    "decisions, tool results that still matter, and what is still open. No preamble."
)
SUMMARIZE_REQUEST = "Summarize the conversation so far:"
