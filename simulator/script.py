"""The conversation script: what the simulated model says, decided from the
conversation alone, so the same request always gets the same answer.

The script reads the latest user message that has text, then, in this order:

0. "Summarize the conversation" at its start: a summary that keeps every line the
   user wrote, so facts survive a context-window fold;
1. "[loop]" in it: call ``calculator`` with "1 + 1" again, forever (to test max_steps);
2. tool results for calls made since: a final answer that quotes every result;
3. arithmetic in it: one ``calculator`` call per expression, in one reply;
4. a question about the time or date: call ``current_time``;
5. "docs: ..." or "search the docs ...": call ``search_docs``;
6. "[recall:REGEX]": answer with the first match of REGEX (its first group if it
   has one) in any earlier message, so a test proves earlier turns were sent;
7. anything else: "You said: <text>".

A tool is only called when the request offers it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from simulator import tokens
from simulator.arithmetic import find_expressions
from simulator.conversation import Conversation, ToolCall, ToolResult

Stop = Literal["end_turn", "tool_use", "max_tokens"]

LOOP_MARKER = "[loop]"
# "[tool:NAME {json arguments}]" asks for one call to any offered tool (MCP tools too).
_TOOL_DIRECTIVE = re.compile(r"\[tool:([A-Za-z0-9_\-]+)\s*(\{.*?\})?\]")
# Whole words, so "the timeout" is not a question about the time.
_TIME_QUESTION = re.compile(
    r"\b(what time|the time|current time|today['\u2019]?s date|what date|what day)\b"
)
_DOCS_PHRASE = "search the docs"
_RECALL_DIRECTIVE = re.compile(r"\[recall:(.+?)\]")
_SUMMARIZE_PHRASE = "Summarize the conversation"
_SUMMARY_CHARS = 2000
_ECHO_CHARS = 200
_RESULT_CHARS = 1000


@dataclass(frozen=True)
class Reply:
    text: str
    # Ids are bare, deterministic hex keys; each wire format adds its own prefix.
    calls: tuple[ToolCall, ...]
    stop: Stop
    input_tokens: int
    output_tokens: int


def respond(conversation: Conversation) -> Reply:
    text, wanted = _decide(conversation)
    seed = conversation.canonical()
    calls = tuple(
        ToolCall(id=_call_key(seed, index), name=name, input=arguments)
        for index, (name, arguments) in enumerate(wanted)
    )
    text, cut = tokens.truncate(text, conversation.max_tokens)
    stop: Stop = "tool_use" if calls else ("max_tokens" if cut else "end_turn")
    return Reply(
        text=text,
        calls=calls,
        stop=stop,
        input_tokens=tokens.input_tokens(conversation),
        output_tokens=tokens.output_tokens(text, calls),
    )


def _call_key(seed: str, index: int) -> str:
    return hashlib.sha256(f"{seed}#{index}".encode()).hexdigest()[:24]


def _decide(conv: Conversation) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    anchor = next((i for i in reversed(range(len(conv.turns))) if _is_user_text(conv, i)), -1)
    text = conv.turns[anchor].text.strip() if anchor >= 0 else ""
    lowered = text.lower()
    if text.startswith(_SUMMARIZE_PHRASE):
        return _summary(text), []
    if LOOP_MARKER in lowered:
        if conv.offers("calculator"):
            return "", [("calculator", {"expression": "1 + 1"})]
        return "I would loop, but no calculator tool is offered.", []
    later = conv.turns[anchor + 1 :]
    results = [result for turn in later for result in turn.tool_results]
    if results:
        calls = {call.id: call for turn in later for call in turn.tool_calls}
        return _summarise(results, calls), []
    directive = _TOOL_DIRECTIVE.search(text)
    if directive and conv.offers(directive.group(1)):
        try:
            arguments = json.loads(directive.group(2) or "{}")
        except json.JSONDecodeError:
            arguments = {}
        return "", [(directive.group(1), arguments if isinstance(arguments, dict) else {})]
    expressions = find_expressions(text)
    if expressions:
        if conv.offers("calculator"):
            return "", [("calculator", {"expression": e}) for e in expressions]
        return f"I cannot calculate {', '.join(expressions)} without a calculator tool.", []
    if conv.offers("current_time") and _TIME_QUESTION.search(lowered):
        return "", [("current_time", {})]
    query = _docs_query(text)
    if query is not None and conv.offers("search_docs"):
        return "", [("search_docs", {"query": query})]
    recall = _RECALL_DIRECTIVE.search(text)
    if recall:
        return _recall(conv, anchor, recall.group(1)), []
    return f"You said: {_clip(text, _ECHO_CHARS)}", []


def _recall(conv: Conversation, anchor: int, pattern: str) -> str:
    try:
        wanted = re.compile(pattern, re.IGNORECASE)
    except re.error:
        return f"I cannot search for {pattern!r}: not a valid pattern."
    for index, turn in enumerate(conv.turns[: anchor + 1]):
        # The asking message itself may carry a summary of what came before it.
        text = _RECALL_DIRECTIVE.sub("", turn.text) if index == anchor else turn.text
        texts = [text, *(result.content for result in turn.tool_results)]
        for text in texts:
            found = wanted.search(text or "")
            if found:
                return f"From earlier: {found.group(1) if found.groups() else found.group(0)}"
    return "I have no record of that in this conversation."


def _summary(text: str) -> str:
    """Keep the user's lines (where the facts are) and the summary it builds on."""
    lines = text.splitlines()[1:]
    kept = [line.strip() for line in lines if line.startswith(("User:", "Summary:"))]
    return _clip("Summary: " + " | ".join(kept), _SUMMARY_CHARS)


def _is_user_text(conv: Conversation, index: int) -> bool:
    turn = conv.turns[index]
    return turn.role == "user" and bool(turn.text.strip())


def _summarise(results: list[ToolResult], calls: dict[str, ToolCall]) -> str:
    parts: list[str] = []
    for result in results:
        call = calls.get(result.call_id)
        name = call.name if call is not None else "tool"
        content = _clip(result.content.strip(), _RESULT_CHARS)
        if result.is_error:
            parts.append(f"The {name} tool failed: {content}")
        elif name == "calculator" and call is not None:
            value = _calculator_value(content)
            if len(results) == 1:
                return f"The answer is {value}."
            expression = call.input.get("expression") if isinstance(call.input, dict) else None
            parts.append(f"{expression or '?'} = {value}")
        else:
            parts.append(f"{name} returned: {content}")
    return "; ".join(part.rstrip(".") for part in parts) + "."


def _calculator_value(content: str) -> str:
    """Accept the shapes a calculator tool plausibly returns: "391",
    "17 * 23 = 391" or {"result": 391}."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if isinstance(data, dict) and "result" in data:
        return str(data["result"])
    return content.rsplit("=", 1)[-1].strip()


def _docs_query(text: str) -> str | None:
    lowered = text.lower()
    if lowered.startswith("docs:"):
        rest = text[len("docs:") :]
    elif _DOCS_PHRASE in lowered:
        rest = text[lowered.index(_DOCS_PHRASE) + len(_DOCS_PHRASE) :]
    else:
        return None
    rest = rest.strip(" \t\n:,-.?!")
    for filler in ("for ", "about ", "on "):
        if rest.lower().startswith(filler):
            rest = rest[len(filler) :].strip()
    return rest or text


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
