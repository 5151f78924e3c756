"""The context-window manager: does the next prompt fit the model, and if not,
which older part of the conversation to fold into a summary.

A fold keeps the system prompt, the latest turns, and every tool call together with
its result: the cut is only ever made in front of an assistant message or in front
of a user message that carries text (never in front of tool results, which would
leave a result without its call). The folded prefix is replaced by one summary made
by a cheap model of the agent's chain, as a step of its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celeriac.conversation.messages import Message

SUMMARY_HEADER = "[Summary of the earlier conversation]"

# Characters per token for the estimate. Real tokenizers give about 4 for English
# prose and fewer for JSON and code; 3.5 errs on the side of folding early.
CHARS_PER_TOKEN = 3.5
# Tokens a provider adds around the text we send (Anthropic's tool-use instructions
# are about 350; role and block markers a few per message), for the upper bound.
FRAMING_TOKENS = 1024
# A fold leaves the prompt at about this share of what the window allows, so that
# the next turns have room before the next fold.
FOLD_TARGET = 0.5


def estimate_tokens(system: str, tools: list[dict[str, Any]], messages: list[Message]) -> int:
    size = len(system) + len(_dumps(tools)) + len(_dumps(messages))
    return math.ceil(size / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Window:
    """The sizes a prompt must fit: ``limit`` is the context window minus the
    ``max_tokens`` reserved for the answer."""

    context_window: int
    max_tokens: int

    @property
    def limit(self) -> int:
        return self.context_window - self.max_tokens


@dataclass(frozen=True)
class Measure:
    tokens: int
    exact: bool  # counted by the provider, not estimated


def most_tokens(system: str, tools: list[dict[str, Any]], messages: list[Message]) -> int:
    """An upper bound on the prompt's tokens, whatever the text: a byte-level BPE
    tokenizer (GPT's; Claude's, as far as is known) never makes more tokens than the
    text has UTF-8 bytes, and the JSON measured here holds all the text the provider
    tokenizes, plus keys and quotes it does not."""
    size = sum(len(part.encode()) for part in (system, _dumps(tools), _dumps(messages)))
    return size + FRAMING_TOKENS


def measure(
    system: str,
    tools: list[dict[str, Any]],
    messages: list[Message],
    window: Window,
    exact: Callable[[], int | None] | None = None,
) -> Measure:
    """The prompt's size: the provider's count, unless even the worst case fits.

    Why not always count: it is one more HTTP call before the step's call (free at
    Anthropic, but rate-limited on its own and some tens of milliseconds), on every
    step of every run, nearly all of which are nowhere near their window. Why not
    count from a share of the window by the estimate (as once, from half): text of
    few characters a token (CJK, base64: a character can be a token or more) is
    estimated at a fraction of its size, so no share is safe and the provider would
    refuse the call. The upper bound is safe, and costs little: a 200k window is
    not counted until the prompt is some 190 kB of JSON. Without a counter, or when
    counting fails, the estimate stands.
    """
    estimate = estimate_tokens(system, tools, messages)
    if exact is not None and most_tokens(system, tools, messages) > window.limit:
        counted = exact()
        if counted is not None:
            return Measure(counted, exact=True)
    return Measure(estimate, exact=False)


def fold_points(messages: list[Message], start: int = 0) -> list[int]:
    """Where a fold may cut (the kept tail starts there), after ``start``. The tail
    must keep the latest exchange, so the last message is never the first kept one
    unless it is the only one."""
    points = []
    for index in range(max(start, 1), len(messages)):
        message = messages[index]
        if message["role"] == "assistant" or _has_text(message):
            points.append(index)
    return points


def choose_fold(
    system: str,
    tools: list[dict[str, Any]],
    messages: list[Message],
    window: Window,
    *,
    start: int,
    summary_allowance: int,
) -> int | None:
    """The cut that keeps the most of the conversation while leaving the prompt
    (with a summary of up to ``summary_allowance`` tokens) at about FOLD_TARGET of
    the limit; if no cut reaches the target, the one keeping the most that still
    fits; None when not even the latest exchange fits."""
    target = window.limit * FOLD_TARGET
    fallback = None
    for point in fold_points(messages, start):
        tail = messages[point:]
        size = estimate_tokens(system, tools, tail) + summary_allowance
        if size <= target:
            return point
        if size <= window.limit and fallback is None:
            fallback = point
    return fallback


def with_summary(messages: list[Message], summary: str, covers: int) -> list[Message]:
    """``messages`` with the first ``covers`` replaced by the summary. The summary
    rides in a user message, merged into the kept tail's first message when that is
    the user's (two user messages in a row are refused by some providers)."""
    note: dict[str, Any] = {"type": "text", "text": f"{SUMMARY_HEADER}\n{summary}"}
    tail = messages[covers:]
    if tail and tail[0]["role"] == "user":
        first = tail[0]
        content = first["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        return [{"role": "user", "content": [note, *blocks]}, *tail[1:]]
    return [{"role": "user", "content": [note]}, *tail]


def transcript(messages: list[Message], *, limit_chars: int) -> str:
    """The folded messages as plain text for the summarizer: tool calls and results
    included, each capped so one huge result cannot crowd out the rest."""
    lines: list[str] = []
    for message in messages:
        content = message["content"]
        who = "User" if message["role"] == "user" else "Assistant"
        if isinstance(content, str):
            lines.append(f"{who}: {content}")
            continue
        for block in content:
            kind = block.get("type")
            if kind == "text":
                lines.append(f"{who}: {block.get('text', '')}")
            elif kind == "tool_use":
                arguments = _dumps(block.get("input", {}))
                lines.append(f"Assistant called {block.get('name')} with {_clip(arguments, 500)}")
            elif kind == "tool_result":
                result = block.get("content", "")
                text = result if isinstance(result, str) else _dumps(result)
                lines.append(f"Tool result: {_clip(text, 1500)}")
    text = "\n".join(lines)
    if len(text) <= limit_chars:
        return text
    # Keep both ends: the start sets the task, the end is the freshest state.
    half = max(0, limit_chars // 2 - 20)
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters left out ...]\n{text[-half:]}"


def _has_text(message: Message) -> bool:
    content = message["content"]
    if isinstance(content, str):
        return bool(content.strip())
    return any(block.get("type") == "text" for block in content) and not any(
        block.get("type") == "tool_result" for block in content
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
