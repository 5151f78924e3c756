"""The autoscaling policy, rule by rule: queue depth, CPU, idle, hysteresis,
cooldown, bounds and the rate-limit veto."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from celeriac.autoscale import (
    REASON_KINDS,
    Decision,
    History,
    Observation,
    PolicyConfig,
    decide,
    history_for,
)

# One sample per second; hysteresis of 2 samples up, 3 down; a 10 s cooldown.
CONFIG = PolicyConfig(min_workers=1, max_workers=4, add_above=100, remove_below=10,
                      cpu_above=70, add_after=2, remove_after=3, cooldown_s=10)


def obs(at: float, *, workers: int = 2, depth: int = 50, cpu: float = 20,
        rate_limited: bool = False) -> Observation:
    return Observation(at=at, workers=workers, queue_depth=depth, cpu_percent=cpu,
                       rate_limited=rate_limited)


def run(samples: Iterable[Observation], config: PolicyConfig = CONFIG,
        history: History | None = None) -> list[Decision]:
    """Feed samples one at a time, as the autoscaler does; returns every decision."""
    history = history or history_for(config)
    decisions = []
    for sample in samples:
        decision = decide(sample, history, config)
        history = history.record(sample, decision)
        decisions.append(decision)
    return decisions


def actions(decisions: list[Decision]) -> list[str]:
    return [d.action for d in decisions]


def test_a_deep_queue_adds_a_worker_once_it_persists() -> None:
    decisions = run(obs(t, depth=150) for t in range(2))
    assert actions(decisions) == ["hold", "add"]
    assert decisions[0].kind == "queue_depth" and "1 of 2 samples" in decisions[0].reason
    assert decisions[1].kind == "queue_depth" and "150 > 100" in decisions[1].reason


def test_depth_at_the_threshold_is_not_pressure() -> None:
    assert actions(run(obs(t, depth=100) for t in range(5))) == ["hold"] * 5


def test_high_cpu_with_work_waiting_adds() -> None:
    decisions = run(obs(t, depth=20, cpu=90) for t in range(2))
    assert decisions[-1] == Decision(decisions[-1].action, decisions[-1].reason, "cpu")
    assert decisions[-1].action == "add"


def test_high_cpu_with_an_empty_queue_neither_adds_nor_removes() -> None:
    decisions = run(obs(t, depth=0, cpu=95) for t in range(5))
    assert actions(decisions) == ["hold"] * 5
    assert {d.kind for d in decisions} == {"steady"}


def test_an_idle_queue_removes_a_worker_once_it_persists() -> None:
    decisions = run(obs(t, depth=3) for t in range(3))
    assert actions(decisions) == ["hold", "hold", "remove"]
    assert [d.kind for d in decisions] == ["idle"] * 3


def test_between_the_thresholds_holds_steady() -> None:
    decisions = run(obs(t, depth=50) for t in range(5))
    assert {(d.action, d.kind) for d in decisions} == {("hold", "steady")}


def test_hysteresis_a_spike_or_lull_resets_the_count() -> None:
    depths = [150, 50, 150, 3, 3, 150, 3, 3]
    assert actions(run(obs(t, depth=d) for t, d in enumerate(depths))) == ["hold"] * 8


def test_cpu_and_depth_pressure_count_as_one_condition() -> None:
    samples = [obs(0, depth=150), obs(1, depth=20, cpu=90)]
    assert actions(run(samples)) == ["hold", "add"]


def test_cooldown_spaces_actions_while_pressure_persists() -> None:
    decisions = run(obs(t, depth=500) for t in range(25))
    added_at = [t for t, d in enumerate(decisions) if d.action == "add"]
    assert added_at == [1, 11, 21]  # hysteresis, then one per 10 s cooldown
    assert decisions[5].kind == "cooldown" and "cooling down" in decisions[5].reason


def test_cooldown_also_follows_a_scale_up_before_a_scale_down() -> None:
    samples = [obs(0, depth=500), obs(1, depth=500)] + [obs(t, depth=0) for t in range(2, 14)]
    decisions = run(samples)
    assert decisions[1].action == "add"
    removed_at = [t for t, d in enumerate(decisions) if d.action == "remove"]
    assert removed_at == [11]  # idle since t=2 (3 samples by t=4), but cooling until t=11


def test_bounds_below_the_minimum_add_at_once() -> None:
    history = History(last_action_at=0.0)  # even during a cooldown
    decision = decide(obs(1, workers=0, depth=0), history, CONFIG)
    assert (decision.action, decision.kind) == ("add", "bounds")


def test_bounds_above_the_maximum_remove_at_once() -> None:
    decision = decide(obs(1, workers=6, depth=1000), history_for(CONFIG), CONFIG)
    assert (decision.action, decision.kind) == ("remove", "bounds")


def test_bounds_at_the_maximum_pressure_holds() -> None:
    decisions = run(obs(t, workers=4, depth=1000) for t in range(5))
    assert {(d.action, d.kind) for d in decisions} == {("hold", "bounds")}
    assert "maximum of 4" in decisions[-1].reason


def test_bounds_at_the_minimum_idle_holds() -> None:
    decisions = run(obs(t, workers=1, depth=0) for t in range(5))
    assert {(d.action, d.kind) for d in decisions} == {("hold", "idle")}
    assert "minimum of 1" in decisions[-1].reason


def test_rate_limit_vetoes_adding() -> None:
    decisions = run(obs(t, depth=1000, rate_limited=True) for t in range(5))
    assert {(d.action, d.kind) for d in decisions} == {("hold", "rate_limited")}


def test_rate_limit_does_not_veto_removing_or_the_minimum() -> None:
    assert actions(run(obs(t, depth=0, rate_limited=True) for t in range(3)))[-1] == "remove"
    floor = decide(obs(0, workers=0, rate_limited=True), history_for(CONFIG), CONFIG)
    assert floor.action == "add"


def test_adding_resumes_when_the_rate_limit_lifts() -> None:
    samples = [obs(0, depth=500, rate_limited=True), obs(1, depth=500, rate_limited=True),
               obs(2, depth=500)]
    assert actions(run(samples)) == ["hold", "hold", "add"]


def test_history_keeps_what_hysteresis_needs() -> None:
    history = history_for(CONFIG)
    for t in range(20):
        history = history.record(obs(t), Decision("hold", "", "steady"))
    assert len(history.observations) == max(CONFIG.add_after, CONFIG.remove_after)
    assert history.last_action_at is None
    history = history.record(obs(20), Decision("add", "", "queue_depth"))
    assert history.last_action_at == 20


def test_every_kind_is_a_bounded_label() -> None:
    samples = [obs(0, workers=0), obs(1, workers=9), obs(2, depth=500),
               obs(3, depth=500, rate_limited=True), obs(4, depth=0, workers=1),
               obs(5, depth=50), obs(6, depth=20, cpu=99)]
    kinds = {decide(s, history_for(CONFIG), CONFIG).kind for s in samples}
    assert kinds <= set(REASON_KINDS)


@pytest.mark.parametrize("bad", [
    {"min_workers": -1},
    {"min_workers": 3, "max_workers": 2},
    {"max_workers": 0, "min_workers": 0},
    {"remove_below": 200, "add_above": 100},
    {"add_after": 0},
    {"remove_after": 0},
    {"cooldown_s": -1},
    {"cpu_above": 120},
])
def test_config_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PolicyConfig(**bad)  # type: ignore[arg-type]
