"""The context-window manager's decisions, without a worker: how a prompt is measured
(estimate, upper bound, the provider's count), where a fold may cut, what the folded
prompt looks like, and which window a chain of models must fit."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest

from celeriac.catalog import ModelSpec
from celeriac.conversation.folding import window_for
from celeriac.conversation.messages import Message, user_text
from celeriac.conversation.window import (
    SUMMARY_HEADER,
    Window,
    choose_fold,
    estimate_tokens,
    fold_points,
    measure,
    most_tokens,
    with_summary,
)

SYSTEM = "You are a helpful assistant."
TOOLS: list[dict[str, Any]] = [
    {"name": "calculator", "description": "Evaluate arithmetic.",
     "input_schema": {"type": "object", "properties": {"expression": {"type": "string"}}}},
]


def call(*ids: str) -> Message:
    return {"role": "assistant", "content": [
        {"type": "tool_use", "id": i, "name": "calculator", "input": {"expression": "1 + 1"}}
        for i in ids
    ]}


def results(*ids: str) -> Message:
    return {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": i, "content": "2", "is_error": False}
        for i in ids
    ]}


def answer(text: str) -> Message:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def thread(turns: int, padding: str = "") -> list[Message]:
    """``turns`` tasks of a thread, each: a question, two rounds of tool calls (the
    second with two parallel calls), an answer."""
    messages: list[Message] = []
    for t in range(turns):
        messages += [
            user_text(f"Question {t}. {padding}"),
            call(f"a{t}"),
            results(f"a{t}"),
            call(f"b{t}", f"c{t}"),
            results(f"b{t}", f"c{t}"),
            answer(f"Answer {t}. {padding}"),
        ]
    return messages


def assert_paired(messages: list[Message]) -> None:
    """Every tool call has its result in the very next message, and every result
    answers a call of the message before it: what providers require."""
    for index, message in enumerate(messages):
        blocks = message["content"] if isinstance(message["content"], list) else []
        calls = {b["id"] for b in blocks if b.get("type") == "tool_use"}
        answered = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
        if calls:
            following = messages[index + 1]["content"] if index + 1 < len(messages) else []
            assert calls == {b.get("tool_use_id") for b in following
                             if b.get("type") == "tool_result"}, index
        if answered:
            assert index > 0, "the prompt starts with a tool result"
            before = messages[index - 1]["content"]
            assert answered <= {b.get("id") for b in before if b.get("type") == "tool_use"}


# -- measuring -------------------------------------------------------------------------


def test_an_estimate_over_the_limit_yields_to_a_count_that_fits() -> None:
    messages = [user_text("lorem ipsum dolor sit amet " * 40)]
    estimate = estimate_tokens(SYSTEM, TOOLS, messages)
    window = Window(context_window=estimate, max_tokens=50)  # the estimate is over
    assert estimate > window.limit
    counted = window.limit - 10  # the provider's tokenizer packs English tighter
    size = measure(SYSTEM, TOOLS, messages, window, exact=lambda: counted)
    assert size.exact and size.tokens == counted
    assert size.tokens <= window.limit  # so the loop calls the model: no fold


def test_without_a_count_the_estimate_decides() -> None:
    messages = [user_text("lorem ipsum dolor sit amet " * 40)]
    estimate = estimate_tokens(SYSTEM, TOOLS, messages)
    window = Window(context_window=estimate, max_tokens=50)
    for exact in (None, lambda: None):  # no counter; a counter that failed
        size = measure(SYSTEM, TOOLS, messages, window, exact=exact)
        assert not size.exact and size.tokens == estimate > window.limit  # a fold


def test_text_of_few_characters_a_token_is_counted_though_its_estimate_is_small() -> None:
    # CJK: about one token a character, where the estimate assumes 3.5 characters.
    messages = [user_text("\u6587\u5b57\u5316\u3051" * 300)]  # 1200 characters
    window = Window(context_window=3000, max_tokens=100)
    assert estimate_tokens(SYSTEM, TOOLS, messages) < window.limit / 2
    asked: list[bool] = []

    def count() -> int:
        asked.append(True)
        return 1250 + 200

    size = measure(SYSTEM, TOOLS, messages, window, exact=count)
    assert asked and size.exact
    assert most_tokens(SYSTEM, TOOLS, messages) >= size.tokens  # the bound holds
    # Three bytes a character: the bound is over the limit, so the count was asked.
    assert most_tokens(SYSTEM, TOOLS, messages) > window.limit


def test_a_prompt_whose_worst_case_fits_is_not_counted() -> None:
    messages = thread(2)
    window = Window(context_window=200_000, max_tokens=4096)
    assert most_tokens(SYSTEM, TOOLS, messages) <= window.limit

    def count() -> int:
        raise AssertionError("an HTTP call that cannot change the decision")

    size = measure(SYSTEM, TOOLS, messages, window, exact=count)
    assert not size.exact and size.tokens == estimate_tokens(SYSTEM, TOOLS, messages)


# -- where a fold cuts -----------------------------------------------------------------


def test_fold_points_never_separate_a_tool_call_from_its_result() -> None:
    messages = thread(3)
    points = fold_points(messages, start=1)
    assert points, "a three-turn thread has somewhere to cut"
    for point in points:
        first = messages[point]
        assert not any(b.get("type") == "tool_result" for b in first["content"]), point
        assert_paired(messages[point:])
    # Every assistant message and every question after the start is a place to cut.
    expected = [i for i, m in enumerate(messages)
                if i >= 1 and (m["role"] == "assistant" or i % 6 == 0)]
    assert points == expected


def test_a_user_message_with_results_and_text_is_no_fold_point() -> None:
    mixed: Message = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "x", "content": "2", "is_error": False},
        {"type": "text", "text": "and now this"},
    ]}
    messages = [user_text("hi"), call("x"), mixed, answer("ok")]
    assert fold_points(messages, start=1) == [1, 3]


def test_choose_fold_keeps_the_latest_turns_and_counts_the_system_prompt() -> None:
    messages = thread(6, padding="lorem ipsum " * 10)
    whole = estimate_tokens(SYSTEM, TOOLS, messages)
    window = Window(context_window=whole // 2, max_tokens=100)
    point = choose_fold(SYSTEM, TOOLS, messages, window, start=1, summary_allowance=80)
    assert point is not None and 1 <= point < len(messages)
    assert point in fold_points(messages, start=1)
    tail = messages[point:]
    assert tail[-1] == messages[-1] and len(tail) >= 2  # the latest exchange is kept
    assert estimate_tokens(SYSTEM, TOOLS, tail) + 80 <= window.limit
    # A longer system prompt leaves less room for the tail: the cut moves later.
    big_system = SYSTEM + " Be thorough." * 20
    later = choose_fold(big_system, TOOLS, messages, window, start=1, summary_allowance=80)
    assert later is not None and later > point
    assert estimate_tokens(big_system, TOOLS, messages[later:]) + 80 <= window.limit


def test_choose_fold_gives_up_when_not_even_the_latest_exchange_fits() -> None:
    messages = thread(2, padding="lorem ipsum " * 50)
    window = Window(context_window=150, max_tokens=50)
    assert choose_fold(SYSTEM, TOOLS, messages, window, start=1, summary_allowance=20) is None


def test_choose_fold_never_cuts_before_start() -> None:
    messages = thread(3)
    window = Window(context_window=10_000, max_tokens=100)  # everything fits the target
    assert choose_fold(SYSTEM, TOOLS, messages, window, start=7, summary_allowance=0) == 7


# -- the folded prompt -----------------------------------------------------------------


def test_a_tail_that_starts_with_the_assistant_gets_a_summary_message_in_front() -> None:
    messages = thread(2)
    assert messages[3]["role"] == "assistant"
    folded = with_summary(messages, "the user asked twice", covers=3)
    assert folded[0]["role"] == "user"
    assert folded[0]["content"] == [
        {"type": "text", "text": f"{SUMMARY_HEADER}\nthe user asked twice"}
    ]
    assert folded[1:] == messages[3:]
    assert_paired(folded)
    roles = [m["role"] for m in folded]
    assert all(a != b for a, b in pairwise(roles))


@pytest.mark.parametrize("content", ["Question 1.", [{"type": "text", "text": "Question 1."}]])
def test_a_tail_that_starts_with_the_user_has_the_summary_merged_in(content: Any) -> None:
    messages = thread(2)
    messages[6] = {"role": "user", "content": content}  # the second question
    folded = with_summary(messages, "turn one: 2", covers=6)
    assert len(folded) == len(messages) - 6  # merged, not one message more
    assert folded[0]["role"] == "user"
    assert folded[0]["content"] == [
        {"type": "text", "text": f"{SUMMARY_HEADER}\nturn one: 2"},
        {"type": "text", "text": "Question 1."},
    ]
    assert folded[1:] == messages[7:]
    assert_paired(folded)


# -- the window a chain must fit -------------------------------------------------------


def model(name: str, window: int, output: int) -> ModelSpec:
    return ModelSpec(id=name, provider="anthropic", context_window=window,
                     max_output_tokens=output, price=None)


def test_the_window_is_the_tightest_of_the_chain_with_each_models_reservation() -> None:
    small = model("small", 10_000, 1_000)  # asked for at most 1000: 9000 left
    roomy = model("roomy", 12_000, 8_000)  # a bigger window, but asked for 4000: 8000
    chosen = window_for([small, roomy], max_tokens=4_000)
    assert (chosen.context_window, chosen.max_tokens, chosen.limit) == (12_000, 4_000, 8_000)
    # The order of the chain does not matter, nor does a model that is roomier still.
    assert window_for([roomy, small, model("huge", 200_000, 64_000)], 4_000) == chosen
    # With a small max_tokens the smallest window is the tightest again.
    assert window_for([small, roomy], max_tokens=500) == Window(10_000, 500)
