"""The strict parsers: JSON as the standard defines it, and Last-Event-ID."""

from __future__ import annotations

from typing import Any

import pytest

from app.schemas import parse_last_event_id
from celeriac import strict_json
from celeriac.conversation.messages import from_openai_message
from celeriac.errors import InvalidRequest


@pytest.mark.parametrize(("raw", "expected"),
                         [(None, 0), ("", 0), ("0", 0), ("42", 42), ("9" * 18, 10**18 - 1)])
def test_last_event_id_of_ascii_digits(raw: str | None, expected: int) -> None:
    assert parse_last_event_id(raw) == expected
    assert parse_last_event_id(None, raw) == expected


def test_the_header_wins_over_the_query() -> None:
    assert parse_last_event_id("7", "3") == 7
    assert parse_last_event_id("", "3") == 3


@pytest.mark.parametrize("raw", ["\u0661\u0662", "\u00b2", "-1", "+1", " 1", "1 ", "1\n",
                                 "1_0", "1e3", "0x1f", "9" * 19, "9" * 5000])
def test_last_event_id_refuses_anything_else(raw: str) -> None:
    for header, query in ((raw, None), (None, raw), ("5", raw), (raw, "5")):
        with pytest.raises(InvalidRequest) as caught:
            parse_last_event_id(header, query)
        assert caught.value.field == "Last-Event-ID"


@pytest.mark.parametrize(
    "text",
    ['{"a": [1, 2.5, -0.0, 1e-400, 1e308, true, null, "\\u00e9\\ud83d\\ude00"]}',
     "1" + "0" * 300, '"' + "x" * 10_000 + '"', "[" * 32 + "]" * 32],
)
def test_json_within_the_rules_is_parsed_as_json_loads_would(text: str) -> None:
    import json

    assert strict_json.loads(text) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "malformed", "field"),
    [
        ('{"a": NaN}', True, "a"),
        ('[Infinity]', True, "0"),
        ('{"a": {"b": [0, -Infinity]}}', True, "a.b.1"),
        ('{"a": 1e309}', False, "a"),
        ('{"a": -1e309}', False, "a"),
        ('{"a": 1' + "0" * 309 + "}", False, "a"),
        ('{"a": ' + "9" * 5000 + "}", False, "a"),
        ('{"a": "x\\u0000"}', False, "a"),
        ('{"a\\u0000": 1}', False, None),
        ('{"a": {"b\\u0000": 1}}', False, "a"),
        ('["\\udfff"]', False, "0"),
        ('"\\ud800x"', False, None),
        ("[" * 33 + "]" * 33, True, "0." * 31 + "0"),
        ("[" * 100_000 + "]" * 100_000, True, None),
        ("{nope", True, None),
        (b'"\xff"', True, None),
    ],
)
def test_json_outside_the_rules_is_refused_saying_where(
    text: str | bytes, malformed: bool, field: str | None
) -> None:
    with pytest.raises(strict_json.JSONRejected) as caught:
        strict_json.loads(text)
    assert caught.value.malformed is malformed
    assert caught.value.code == ("malformed_json" if malformed else "validation_error")
    assert caught.value.field == field


def test_tool_arguments_a_model_sent_outside_the_rules_are_kept_raw() -> None:
    message: dict[str, Any] = {"tool_calls": [
        {"id": "c1", "function": {"name": "calc", "arguments": '{"x": NaN}'}},
        {"id": "c2", "function": {"name": "calc", "arguments": '{"x": 1}'}},
    ]}
    first, second = from_openai_message(message)
    assert first["input"] == {"_raw": '{"x": NaN}'}
    assert second["input"] == {"x": 1}
