"""The rate limiter and circuit breaker against a real Redis, across processes."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections.abc import Callable, Iterator
from multiprocessing.synchronize import Barrier
from typing import Any

import pytest
import redis

from celeriac import redis_keys as keys
from celeriac.catalog import ModelSpec, Price
from celeriac.errors import RequestExceedsTPM, TransientProviderError
from celeriac.gateway.cache import ResponseCache
from celeriac.gateway.caller import Caller, CallFailed, exhausted
from celeriac.gateway.limits.breaker import CircuitBreaker
from celeriac.gateway.limits.config import BreakerSettings, Limits, ModelLimits
from celeriac.gateway.limits.ratelimit import Grant, RateLimiter
from celeriac.gateway.providers.base import LLMRequest
from celeriac.gateway.providers.registry import ProviderEndpoint, ProviderRegistry
from celeriac.gateway.retry import RetryPolicy
from simulator import start_in_thread
from tests.support.services import RedisServer

LIMITS_DB = 10


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url(LIMITS_DB), decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def _grab(url: str, n: int, rpm: int, out: multiprocessing.Queue,  # type: ignore[type-arg]
          start: Barrier) -> None:
    client = redis.Redis.from_url(url, decode_responses=True)
    limiter = RateLimiter(client, Limits(models={"m": ModelLimits(rpm=rpm)}, burst=2))
    # Every process has imported and connected before any takes a slot: the span
    # measured below is the limiter's pace, not the spawn and import skew.
    start.wait(timeout=60)
    for _ in range(n):
        grant = limiter.acquire("m", 1, max_wait_s=60)
        assert grant.granted
        time.sleep(grant.wait_s)
        out.put(time.time())


def test_limiter_paces_calls_across_processes(redis_server: RedisServer,
                                              r: redis.Redis) -> None:
    rpm, per_process = 600, 15  # one slot every ~0.1 s
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(3)
    procs = [
        ctx.Process(
            target=_grab, args=(redis_server.url(LIMITS_DB), per_process, rpm, out, start)
        )
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    times = sorted(out.get(timeout=60) for _ in range(3 * per_process))
    for p in procs:
        p.join(10)
    # Any one-second window holds at most the pace (589/min ~ 9.8/s) plus the burst.
    per_s = RateLimiter(r, Limits(burst=2)).pace_rpm(rpm) / 60
    window = 1.0
    worst = max(sum(1 for t in times if start <= t < start + window) for start in times)
    assert worst <= 10 + 2 + 1, worst
    # And the pace is used: 45 calls need about (45 - 3) / 9.8 s, not much more.
    assert times[-1] - times[0] < (len(times) - 3) / per_s + 1.5


def test_limiter_refuses_long_waits_without_reserving(r: redis.Redis) -> None:
    # 6 RPM paced to 4: one slot every 15 s, so the second call is refused however
    # slowly this test runs.
    limiter = RateLimiter(r, Limits(models={"m": ModelLimits(rpm=6)}, burst=0))
    assert limiter.acquire("m", 1, max_wait_s=0).granted
    refused = limiter.acquire("m", 1, max_wait_s=0.5)
    assert not refused.granted and refused.wait_s > 0.5
    # Nothing was reserved by the refusal: the next call is offered the same slot, not
    # the one after it (a reservation would have moved it 15 s later).
    again = limiter.acquire("m", 1, max_wait_s=0.5)
    assert not again.granted and again.slot_s == refused.slot_s


def test_token_limit_reserves_then_settles(r: redis.Redis) -> None:
    limiter = RateLimiter(r, Limits(models={"m": ModelLimits(tpm=6000)}, tpm_burst_fraction=0.1))
    assert limiter.acquire("m", 600, max_wait_s=0).granted  # the burst: 10% of 6000
    blocked = limiter.acquire("m", 600, max_wait_s=0)
    assert not blocked.granted and blocked.wait_s > 5  # 600 tokens at 100 tokens/s
    limiter.settle_tokens("m", estimated=600, actual=60)  # the call used far less
    assert limiter.acquire("m", 100, max_wait_s=0).granted


# 60 000 TPM is 1 000 tokens a second, with a burst (10%) of 6 000 tokens, or 6 s.
BIG_TPM = 60_000


def test_an_idle_bucket_grants_a_call_larger_than_the_burst_at_once(r: redis.Redis) -> None:
    # A third of the TPM, over five times the burst: measured from an empty bucket its
    # wait used to be 20 - 6 = 14 s, every time it asked, so its step was re-queued with
    # the same wait until the run's time ran out.
    limiter = RateLimiter(r, Limits(models={"m": ModelLimits(tpm=BIG_TPM)}))
    grant = limiter.acquire("m", 20_000, max_wait_s=5)
    assert grant.granted and grant.wait_s == 0
    # It left 20 s of debt: the next big call waits for all of it (less the time this
    # test took between the two calls), a small one for all but the burst.
    again = limiter.acquire("m", 20_000, max_wait_s=0)
    assert not again.granted and 15 < again.wait_s <= 20
    small = limiter.acquire("m", 100, max_wait_s=0)
    assert not small.granted and 9 < small.wait_s <= 20 - 6 + 0.1


def test_calls_larger_than_the_burst_keep_to_the_tpm_in_the_long_run(r: redis.Redis) -> None:
    # Big and small calls, their slots reserved ahead without sleeping. A provider counts
    # tokens in a bucket holding one minute's worth, refilled at the TPM: no slot may
    # find it short of the call's tokens.
    limiter = RateLimiter(r, Limits(models={"m": ModelLimits(tpm=BIG_TPM)}))
    sizes = [20_000, 500, 45_000, 30_000, 2_000, 60_000, 25_000, 1_000]
    grants = [limiter.acquire("m", n, max_wait_s=600) for n in sizes]
    assert all(g.granted for g in grants)
    rate = BIG_TPM / 60
    level, at = float(BIG_TPM), grants[0].slot_s
    for n, g in sorted(zip(sizes, grants, strict=True), key=lambda p: p[1].slot_s):
        level = min(float(BIG_TPM), level + (g.slot_s - at) * rate)
        at = g.slot_s
        assert level >= n - 1, (n, level)  # (1 token: slots are whole microseconds)
        level -= n
    # Over the whole span no more than the TPM (the last call's tokens go at its slot,
    # so they count against the time after it) ...
    span = grants[-1].slot_s - grants[0].slot_s
    assert sum(sizes[:-1]) <= rate * span + 6_000 + 1
    # ... and not much less either: the calls wait for their debt, not for a full minute.
    assert rate * span <= sum(sizes[:-1]) + 1


def test_a_call_larger_than_the_whole_tpm_is_refused_for_good(r: redis.Redis) -> None:
    limiter = RateLimiter(r, Limits(models={"m": ModelLimits(rpm=600, tpm=BIG_TPM)}))
    with pytest.raises(RequestExceedsTPM) as refused:
        limiter.acquire("m", BIG_TPM + 1, max_wait_s=600)
    assert refused.value.code == "request_exceeds_tpm_limit"
    assert str(BIG_TPM + 1) in refused.value.message and str(BIG_TPM) in refused.value.message
    # Nothing was reserved, in either bucket: the next call goes at once.
    assert r.get(keys.rate_bucket("m", "tpm")) is None
    assert r.get(keys.rate_bucket("m", "rpm")) is None
    assert limiter.acquire("m", BIG_TPM, max_wait_s=0).granted  # the whole TPM still fits


def test_the_caller_fails_a_call_over_the_tpm_without_sending_it(r: redis.Redis) -> None:
    simulator = start_in_thread()
    try:
        limits = Limits(models={"m": ModelLimits(tpm=1_000)})
        model, caller = _simulated_caller(r, simulator, limits, max_output_tokens=4096)
        request = LLMRequest(model="m", system="", max_tokens=2_000, tools=[],
                             messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(CallFailed) as failed:
            caller.call([model], 0, lambda _model: request)
        # A permanent error with a stable code: the loop fails the step at once rather
        # than re-queueing it for a wait that never ends.
        assert failed.value.error.code == "request_exceeds_tpm_limit"
        assert not isinstance(failed.value.error, TransientProviderError)
        assert simulator.log() == []
    finally:
        simulator.stop()


def test_pause_holds_every_caller(r: redis.Redis) -> None:
    limiter = RateLimiter(r, Limits())
    other_worker = RateLimiter(redis.Redis(connection_pool=r.connection_pool), Limits())
    limiter.pause("m", 10.0)
    grant = other_worker.acquire("m", 1, max_wait_s=10)
    assert 8 < grant.wait_s <= 10
    assert 8 < other_worker.paused_for("m") <= 10
    assert not other_worker.acquire("m", 1, max_wait_s=1).granted


def test_breaker_opens_on_consecutive_failures_half_opens_and_closes(r: redis.Redis) -> None:
    breaker = CircuitBreaker(r, BreakerSettings(consecutive_failures=5, open_s=1.0,
                                                half_open_trials=1, min_volume=100))
    for _ in range(4):
        breaker.record("m", ok=False)
    assert breaker.view("m").state == "closed" and breaker.allow("m")
    assert breaker.record("m", ok=False) == "open"
    assert not breaker.allow("m")
    deadline = time.monotonic() + 10
    while not breaker.allow("m"):  # the first caller after open_s gets the trial
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert breaker.view("m").state == "half_open"
    assert not breaker.allow("m")  # only one trial at a time
    assert breaker.record("m", ok=True) == "closed"
    assert breaker.allow("m")


def test_breaker_reopens_when_the_trial_fails(r: redis.Redis) -> None:
    breaker = CircuitBreaker(r, BreakerSettings(consecutive_failures=1, open_s=1.0))
    breaker.record("m", ok=False)
    deadline = time.monotonic() + 10
    while not breaker.allow("m"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert breaker.record("m", ok=False) == "open"
    assert not breaker.allow("m")


def test_breaker_opens_on_error_rate_with_minimum_volume(r: redis.Redis) -> None:
    breaker = CircuitBreaker(r, BreakerSettings(consecutive_failures=100, min_volume=10,
                                                error_rate=0.5))
    for i in range(8):  # 4 of 8 fail, alternating: under the minimum volume
        breaker.record("m", ok=i % 2 == 0)
    assert breaker.view("m").state == "closed"
    breaker.record("m", ok=False)  # 5 of 9
    assert breaker.view("m").state == "closed"
    assert breaker.record("m", ok=False) == "open"  # 6 of 10 > 50%


def test_exhausted_headers_are_read() -> None:
    assert exhausted({"x-ratelimit-remaining-requests": "0",
                      "x-ratelimit-reset-requests": "1.5s"})
    assert exhausted({"x-ratelimit-remaining-tokens": " 0 "})
    assert not exhausted({"x-ratelimit-remaining-requests": "5",
                          "x-ratelimit-reset-requests": "1.5s"})
    assert exhausted({"anthropic-ratelimit-tokens-remaining": "0"})
    assert not exhausted({"anthropic-ratelimit-tokens-remaining": "12"})
    assert not exhausted({})


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    policy = RetryPolicy(backoff_base_s=1, backoff_cap_s=5)
    for failures, full in [(1, 1), (2, 2), (3, 4), (4, 5), (9, 5)]:
        samples = [policy.backoff(failures) for _ in range(200)]
        assert all(full / 2 <= s <= full for s in samples)
        assert max(samples) - min(samples) > full / 10  # jittered, not constant
    assert RetryPolicy(jitter=False).backoff(3) == 4


def test_a_half_open_trial_that_never_reports_does_not_lock_the_circuit(
    r: redis.Redis,
) -> None:
    breaker = CircuitBreaker(r, BreakerSettings(consecutive_failures=1, open_s=1.0,
                                                half_open_trials=1))
    breaker.record("m", ok=False)
    deadline = time.monotonic() + 10
    while not breaker.allow("m"):  # the trial goes to a caller that never calls
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not breaker.allow("m")
    while not breaker.allow("m"):  # after another open period, a new trial may go
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert breaker.record("m", ok=True) == "closed"


def _spacing(grants: list[Grant]) -> list[float]:
    return [round(b.slot_s - a.slot_s, 3) for a, b in itertools.pairwise(grants)]


def test_feedback_slows_the_pace_rather_than_stopping_calls(r: redis.Redis) -> None:
    # 60 RPM paced to 59: one slot every ~1 s. Slots are reserved without sleeping, so a
    # slot is exactly one interval after the previous one unless this test stalls for a
    # whole interval between two calls.
    limits = Limits(models={"m": ModelLimits(rpm=60)}, burst=0, jitter_s=0,
                    slowdown=0.5, recover_s=1.5)
    limiter = RateLimiter(r, limits)
    other_worker = RateLimiter(redis.Redis(connection_pool=r.connection_pool), limits)
    interval = 60 / limiter.pace_rpm(60)
    before = [limiter.acquire("m", 1, max_wait_s=30) for _ in range(3)]
    assert _spacing(before) == [pytest.approx(interval, abs=0.002)] * 2
    assert limiter.slow_down("m") == 0.5
    # A second report of the same overload (calls granted before the cut) does not cut
    # again: one cut per wait_in_place_s. It reads the factor in force, which has been
    # climbing back since the cut; a second cut would have halved it.
    floor = limiter.pace_factor("m")
    second = other_worker.slow_down("m")
    assert floor - 1e-5 <= second <= limiter.pace_factor("m") + 1e-5
    assert other_worker.paused_for("m") == 0  # nobody is stopped...
    r.delete(keys.rate_bucket("m", "rpm"))  # (as if the slots reserved before had gone by)
    slowest = other_worker.pace_factor("m")
    after = [other_worker.acquire("m", 1, max_wait_s=30) for _ in range(4)]
    fastest = other_worker.pace_factor("m")
    assert all(g.granted for g in after)
    assert after[0].wait_s == 0  # ...nor held back: the next call goes at once...
    # ...and every worker goes at the pace times the factor in force, which is climbing
    # back from 0.5 (by 1/3 a second with recover_s=1.5). Still well below 1, so the
    # slowed spacing cannot pass for the full pace.
    assert fastest < 0.9, fastest
    assert all(interval / fastest - 0.002 <= s <= interval / slowest + 0.002
               for s in _spacing(after)), (_spacing(after), slowest, fastest)
    # The pace climbs back, linearly, to the full rate over recover_s.
    deadline = time.monotonic() + 10
    while limiter.pace_factor("m") < 1.0:
        assert time.monotonic() < deadline, limiter.pace_factor("m")
        time.sleep(0.05)
    r.delete(keys.rate_bucket("m", "rpm"))
    again = [limiter.acquire("m", 1, max_wait_s=30) for _ in range(3)]
    assert _spacing(again) == [pytest.approx(interval, abs=0.002)] * 2


def test_headroom_covers_the_burst_and_the_jitter_allowance(r: redis.Redis) -> None:
    limiter = RateLimiter(r, Limits(burst=2, jitter_s=0.8))
    # 600 RPM: the burst (2 + 1) and 0.8 s of calls (8) below the limit.
    assert limiter.pace_rpm(600) == 589
    assert limiter.pace_rpm(60) == 60 - 3 - 1
    assert limiter.pace_rpm(3) == 1


def _caller(r: redis.Redis, limits: Limits, sleep: Callable[[float], None]) -> Caller:
    return Caller(providers=ProviderRegistry({}), limiter=RateLimiter(r, limits),
                  breaker=CircuitBreaker(r, limits.breaker), cache=ResponseCache(r),
                  limits=limits, sleep=sleep)


def test_a_call_that_wakes_too_late_for_its_slot_takes_a_fresh_one(r: redis.Redis) -> None:
    limits = Limits(models={"m": ModelLimits(rpm=600)}, burst=0, jitter_s=0.4)
    stalls = [0.5]  # the first wake-up comes 0.5 s late (a stalled process), then none

    def stalled_sleep(seconds: float) -> None:
        time.sleep(seconds + (stalls.pop() if stalls else 0.0))

    caller = _caller(r, limits, stalled_sleep)
    RateLimiter(r, limits).acquire("m", 1, max_wait_s=0)  # someone holds the first slot
    start = time.time()
    grant = caller._take_slot("m", 1)
    assert grant.granted
    # It did not go out 0.5 s after its slot (~0.1 s after the start), bunched with later
    # calls: it took a fresh slot after waking (at least 0.5 s after the start), and the
    # missed one stayed spent.
    assert grant.slot_s >= start + 0.5
    assert grant.wait_s > 0.5


def test_a_call_late_again_and_again_is_requeued(r: redis.Redis) -> None:
    limits = Limits(models={"m": ModelLimits(rpm=600)}, burst=0, jitter_s=0.2)
    others = RateLimiter(r, limits)

    def stalled_sleep(seconds: float) -> None:
        time.sleep(seconds + 0.15)  # wakes 0.15 s late, every time...
        for _ in range(3):  # ...while other workers keep taking the slots ahead
            others.acquire("m", 1, max_wait_s=10)

    others.acquire("m", 1, max_wait_s=0)
    grant = _caller(r, limits, stalled_sleep)._take_slot("m", 1)
    # Re-queued (countdown 0) rather than sent late.
    assert not grant.granted and grant.wait_s == 0


def test_a_200_showing_nothing_left_slows_the_pace_instead_of_pausing(r: redis.Redis) -> None:
    # The simulator at 2 RPM: the second call fills its window and its 200 says
    # "requests remaining 0, reset in ~60 s" (fully replenished). That used to pause the
    # model for every worker for the whole minute (the bench's 59 s stall).
    simulator = start_in_thread(rpm=2)
    try:
        limits = Limits(models={"m": ModelLimits(rpm=600)})
        model, caller = _simulated_caller(r, simulator, limits, max_output_tokens=1024)
        request = LLMRequest(model="m", system="", max_tokens=16, tools=[],
                             messages=[{"role": "user", "content": "hi"}])
        for _ in range(2):
            served = caller.call([model], 0, lambda _model: request)
        assert served.response.rate_headers["anthropic-ratelimit-requests-remaining"] == "0"
        limiter = RateLimiter(r, limits)
        assert limiter.paused_for("m") == 0
        assert limiter.pace_factor("m") == pytest.approx(limits.slowdown, abs=0.01)
        # Each call carried its slot, as the simulator logged.
        assert all(e["slot"] and 0 <= e["ts"] - e["slot"] < 5 for e in simulator.log())
    finally:
        simulator.stop()


def _simulated_caller(r: redis.Redis, simulator: Any, limits: Limits, *,
                      max_output_tokens: int) -> tuple[ModelSpec, Caller]:
    """A Caller for model "m" on the simulator's Anthropic endpoint. Priced: the
    caller prices every answer (it journals the cost with it)."""
    model = ModelSpec(id="m", provider="anthropic", context_window=200_000,
                      max_output_tokens=max_output_tokens, price=Price(1.0, 5.0, 1.25, 0.1))
    providers = ProviderRegistry({"anthropic": ProviderEndpoint("sim-key", simulator.url)})
    caller = Caller(providers=providers, limiter=RateLimiter(r, limits),
                    breaker=CircuitBreaker(r, limits.breaker), cache=ResponseCache(r),
                    limits=limits)
    return model, caller
