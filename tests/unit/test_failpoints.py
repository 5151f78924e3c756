"""Failpoints parse strictly and fire by their probability; the tool time limit
stops waiting for a stuck tool. No process dies here: ``die`` is injected."""

from __future__ import annotations

import threading
import time

import pytest

from celeriac.durability.failpoints import NO_FAILPOINTS, Failpoints
from celeriac.errors import CeleriacError
from celeriac.tools.base import ToolResult
from celeriac.tools.limit import run_with_limit


def test_unset_failpoints_are_off() -> None:
    assert not Failpoints.parse(None).enabled
    assert not Failpoints.parse("").enabled
    NO_FAILPOINTS.hit("before_call", "s")  # would kill the test run if it fired


def test_parse_names_and_probabilities() -> None:
    points = Failpoints.parse("before_call=0.1, after_call=1,before_ack")
    assert points.probabilities == {"before_call": 0.1, "after_call": 1.0, "before_ack": 1.0}


@pytest.mark.parametrize("spec", ["before_lunch=0.1", "after_call=2", "after_call=x"])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(CeleriacError) as error:
        Failpoints.parse(spec)
    assert error.value.code == "config_error"


def test_a_failpoint_fires_by_its_probability(capfd: pytest.CaptureFixture[str]) -> None:
    deaths: list[int] = []
    rolls = iter([0.05, 0.5])
    points = Failpoints({"after_call": 0.1}, die=lambda: deaths.append(1),
                        dice=lambda: next(rolls))
    points.hit("after_call", "run-0-llm")  # 0.05 < 0.1: fires
    points.hit("after_call", "run-0-llm")  # 0.5 >= 0.1: does not
    points.hit("before_call", "run-0-llm")  # not configured
    assert deaths == [1]
    assert '"failpoint": "after_call", "step": "run-0-llm"' in capfd.readouterr().err


def test_a_tool_past_its_limit_is_abandoned_with_a_clear_error() -> None:
    release = threading.Event()
    started = time.monotonic()
    result = run_with_limit(lambda: ToolResult("late", False) if release.wait(10) else
                            ToolResult("never", False), 0.2, tool="stuck", step="s")
    assert time.monotonic() - started < 5
    assert result.is_error and result.code == "tool_timeout"
    assert "stuck did not finish within its time limit of 0.2 s" in result.content
    release.set()


def test_a_tool_within_its_limit_returns_its_result() -> None:
    assert run_with_limit(lambda: ToolResult("ok", False), 5, tool="t", step="s") == \
        ToolResult("ok", False)
