"""Conversation threads, on a real worker and the simulated provider, on SQLite and
PostgreSQL: later turns see earlier ones, turns of one thread never interleave, and
a thread is visible only to its tenant."""

from __future__ import annotations

import itertools
import threading
from datetime import datetime, timedelta
from typing import Any

from flask.testing import FlaskClient

from celeriac.api_keys import create_key
from celeriac.execution.step_ids import llm_step_id
from celeriac.store import Run, Step
from tests.conftest import Stack
from tests.support.runs import wait_terminal


def run_on(stack: Stack, text: str, thread_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"input": text, **extra}
    if thread_id is not None:
        body["thread_id"] = thread_id
    response = stack.client.post("/agent/run", json=body)
    assert response.status_code == 202, response.get_json()
    accepted: dict[str, Any] = response.get_json()
    return accepted


def test_a_third_turn_answers_from_the_first(stack: Stack) -> None:
    first = run_on(stack, "Please remember this: the launch code is 7421.")
    thread_id = first["thread_id"]
    assert first["thread_url"] == f"/agent/threads/{thread_id}"
    assert wait_terminal(stack.client, first["task_id"])["status"] == "completed"

    second = run_on(stack, "What is 17 * 23?", thread_id)
    assert second["thread_id"] == thread_id
    done = wait_terminal(stack.client, second["task_id"])
    assert done["status"] == "completed" and "391" in (done["result"] or "")

    third = run_on(stack, r"What was the launch code? [recall:launch code is (\d+)]", thread_id)
    done = wait_terminal(stack.client, third["task_id"])
    assert done["status"] == "completed", done
    assert done["result"] == "From earlier: 7421"
    assert done["thread_id"] == thread_id

    # A task outside the thread has no such memory: the answer came from the thread.
    alone = run_on(stack, r"What was the launch code? [recall:launch code is (\d+)]")
    assert alone["thread_id"] != thread_id
    done = wait_terminal(stack.client, alone["task_id"])
    assert done["result"] == "I have no record of that in this conversation."

    doc = stack.client.get(f"/agent/threads/{thread_id}").get_json()
    assert [t["task_id"] for t in doc["turns"]] == [
        first["task_id"], second["task_id"], third["task_id"]
    ]
    assert doc["turns"][2]["result"] == "From earlier: 7421"
    per_turn = [t["usage"]["cost_usd"] for t in doc["turns"]]
    assert all(cost > 0 for cost in per_turn)
    assert abs(doc["usage"]["cost_usd"] - sum(per_turn)) < 1e-9
    assert doc["usage"]["input_tokens"] == sum(t["usage"]["input_tokens"] for t in doc["turns"])


def test_turns_of_one_thread_run_one_at_a_time_in_order(stack: Stack) -> None:
    first = run_on(stack, "Start a thread.")
    thread_id = first["thread_id"]
    wait_terminal(stack.client, first["task_id"])
    # Slow turns (the simulator holds each answer 300 ms), submitted all at once.
    slow = {"metadata": {"simulator": {"latency_ms": 300}}}
    accepted: list[dict[str, Any]] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        doc = run_on(stack, f"Turn number {n}.", thread_id, **slow)
        with lock:
            accepted.append(doc)

    senders = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    for doc in accepted:
        assert wait_terminal(stack.client, doc["task_id"], timeout=90)["status"] == "completed"

    services = stack.app.extensions["celeriac"].services
    with services.db.reader() as s:
        runs = [s.get(Run, doc["task_id"]) for doc in accepted]
        spans = sorted(
            (r.thread_seq, _aware(r.started_at), _aware(r.finished_at), r.input_tokens)
            for r in runs
            if r
        )
    assert [span[0] for span in spans] == [2, 3, 4, 5]  # distinct places, none dropped
    for earlier, later in itertools.pairwise(spans):
        assert later[1] >= earlier[2], "a turn started before the previous one ended"
        # Each turn's prompt carried every earlier turn, so prompts only grow.
        assert later[3] > earlier[3]
    doc = stack.client.get(f"/agent/threads/{thread_id}").get_json()
    assert [t["status"] for t in doc["turns"]] == ["completed"] * 5


def test_a_turn_waiting_for_its_thread_starts_as_soon_as_the_turn_before_ends(
    stack: Stack,
) -> None:
    # The stack's turns re-check their thread only every 60 s (conftest), so only the
    # wake-up sent by the ending turn can start the second turn within the deadline.
    assert stack.settings.thread_recheck_s == 60
    first = run_on(stack, "Start a slow thread.",
                   metadata={"simulator": {"latency_ms": 1500}})
    second = run_on(stack, "And follow it up.", first["thread_id"])
    assert wait_terminal(stack.client, first["task_id"])["status"] == "completed"
    assert wait_terminal(stack.client, second["task_id"], timeout=30)["status"] == "completed"
    services = stack.app.extensions["celeriac"].services
    with services.db.reader() as s:
        earlier, later = s.get(Run, first["task_id"]), s.get(Run, second["task_id"])
        assert earlier is not None and later is not None
        assert _aware(later.started_at) >= _aware(earlier.finished_at)
        # It did wait: its first delivery found the first turn running.
        waited = s.get(Step, llm_step_id(later.id, 0))
        assert waited is not None and waited.deliveries >= 2, waited


def test_a_thread_is_visible_only_to_its_tenant(api: FlaskClient) -> None:
    db = api.application.extensions["celeriac"].services.db
    a = {"Authorization": f"Bearer {create_key(db, 'tenant-a')}"}
    b = {"Authorization": f"Bearer {create_key(db, 'tenant-b')}"}
    made = api.post("/agent/run", json={"input": "Tenant A's secret: 55."}, headers=a)
    assert made.status_code == 202
    thread_id = made.get_json()["thread_id"]
    mine = api.get(f"/agent/threads/{thread_id}", headers=a)
    assert mine.status_code == 200
    assert mine.get_json()["turns"][0]["input"] == "Tenant A's secret: 55."
    other = api.get(f"/agent/threads/{thread_id}", headers=b)
    assert other.status_code == 404
    assert other.get_json()["error"]["code"] == "not_found"
    # Nor can B continue A's thread: the same 404 as for a thread that never was.
    joined = api.post(
        "/agent/run", json={"input": "Tell me the secret.", "thread_id": thread_id}, headers=b
    )
    assert joined.status_code == 404
    assert joined.get_json()["error"]["field"] == "thread_id"
    unknown = api.post("/agent/run", json={"input": "Hello.", "thread_id": "f" * 32}, headers=a)
    assert unknown.status_code == 404
    assert api.get(f"/agent/threads/{'f' * 32}", headers=a).status_code == 404
    # B continuing its own thread works; A's thread still has its one turn.
    own = api.post("/agent/run", json={"input": "B here."}, headers=b).get_json()["thread_id"]
    again = api.post("/agent/run", json={"input": "B again.", "thread_id": own}, headers=b)
    assert again.status_code == 202
    turns = api.get(f"/agent/threads/{own}", headers=b).get_json()["turns"]
    assert [t["input"] for t in turns] == ["B here.", "B again."]
    assert len(api.get(f"/agent/threads/{thread_id}", headers=a).get_json()["turns"]) == 1


def test_bad_thread_ids_are_refused_with_the_field_named(stack: Stack) -> None:
    for bad in ("", "x" * 65, "has space", 7):
        response = stack.client.post("/agent/run", json={"input": "hi", "thread_id": bad})
        assert response.status_code == 422, bad
        assert response.get_json()["error"]["field"] == "thread_id"


def _aware(moment: datetime | None) -> datetime:
    assert moment is not None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.now().astimezone().tzinfo)




def test_time_spent_waiting_for_the_thread_does_not_count_against_the_limit(
    stack: Stack,
) -> None:
    """The wall-clock limit counts from a task's start: a turn queued behind a slow
    turn of its thread for longer than its own limit still runs, and then its limit
    holds from the moment it started."""
    first = run_on(stack, "Start a slow thread.", metadata={"simulator": {"latency_ms": 3000}})
    second = run_on(stack, "And follow it up.", first["thread_id"])
    services = stack.app.extensions["celeriac"].services
    limit = timedelta(seconds=1)
    with services.db.session() as s:
        run = s.get(Run, second["task_id"])
        assert run is not None and run.status == "queued"
        run.deadline_at = _aware(run.created_at) + limit  # a 1 s limit, set while it waits
    assert wait_terminal(stack.client, first["task_id"])["status"] == "completed"
    done = wait_terminal(stack.client, second["task_id"], timeout=60)
    assert done["status"] == "completed", done
    with services.db.reader() as s:
        later = s.get(Run, second["task_id"])
        assert later is not None
        waited = _aware(later.started_at) - _aware(later.created_at)
        assert waited > limit, waited  # it did wait longer than its limit...
        # ...and its limit was moved to count from its start.
        assert _aware(later.deadline_at) - _aware(later.started_at) == limit
