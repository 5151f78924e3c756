"""The web pages in a real browser (headless Chromium driven by Playwright) against the
real stack: a worker, Redis and the simulated provider, served over HTTP.

The dashboard at ``/dashboard`` shows exactly what ``GET /agent/dashboard/data`` says
(same numbers, same formatting), keeps updating without a reload, survives a failed
poll, and never talks to a host other than ours (machines may be offline). The form at
``/`` runs "What is 17 * 23?" to 391. Screenshots go to tests/artifacts/.

Chromium is Debian's (/usr/bin/chromium; never ``playwright install``): missing, it is
installed with apt when running as root; if it still is not there the tests skip
locally and fail in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from celeriac.api_keys import create_key
from tests.conftest import Stack
from tests.support.runs import submit, wait_terminal
from tests.support.services import IN_CI, PROJECT_DIR
from tests.support.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = PROJECT_DIR / "tests" / "artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_MODEL = "claude-sonnet-4-20250514"
CALCULATION = "What is 17 * 23?"
FAILING = {"input": "Hi", "metadata": {"simulator": {"fault": "400"}}}  # permanent error


def unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


# ---- browser -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed with apt when missing and we are root."""
    if not os.access(CHROMIUM, os.X_OK) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=900)
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} (Debian package chromium) is not installed and cannot be")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """A persistent Chromium context on a fresh, throwaway profile directory."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the Python package playwright is not installed (pip install playwright)")
    with (
        tempfile.TemporaryDirectory(prefix="celeriac-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            headless=True,
            args=LAUNCH_ARGS,
            viewport={"width": 1400, "height": 1000},
            locale="en-US",
            timezone_id="UTC",
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


class Watched:
    """A page with every request URL and every JavaScript error it produced."""

    def __init__(self, context: Any):
        self.page = context.new_page()
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.urls.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # Failed HTTP loads are checked through the requests; these are script errors.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console.error: {message.text}")

    def foreign_requests(self) -> list[str]:
        return [
            url
            for url in self.urls
            if urlsplit(url).scheme not in ("data", "blob", "about")
            and urlsplit(url).hostname not in LOCAL_HOSTS
        ]

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def live_url(stack: Stack) -> Iterator[str]:
    """The stack's Flask app served over real HTTP by a threaded WSGI server."""
    server = make_server("127.0.0.1", 0, stack.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True, animations="disabled")


# ---- what the dashboard should show ----------------------------------------------------


def dashboard_data(stack: Stack) -> dict[str, Any]:
    response = stack.client.get("/agent/dashboard/data")
    assert response.status_code == 200, response.get_data(as_text=True)
    data: dict[str, Any] = response.get_json()
    return data


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def usd(value: float | None) -> str:
    return "—" if value is None else f"${value:.6f}"


def remaining(budget: dict[str, Any]) -> str:
    if budget["remaining_usd"] is not None:
        return usd(budget["remaining_usd"])
    return "no cap" if budget["cap_usd"] is None else "—"


def expected_view(data: dict[str, Any]) -> dict[str, Any]:
    """The page's text, derived from the JSON with Python's own formatting."""
    t = data["totals"]
    hours = data["requests_by_hour"]
    sums = {k: sum(h[k] for h in hours) for k in ("completed", "failed", "cancelled")}
    days = data["cost_by_day"]
    order = {"high": 0, "default": 1, "low": 2}
    budgets = data["budgets"]
    return {
        "success-rate": pct(t["success_rate"]),
        "error-rate": pct(t["error_rate"]),
        "avg-latency": "—" if t["avg_latency_s"] is None else f"{t['avg_latency_s']:.2f} s",
        "cost-today": usd(t["cost_today_usd"]),
        "queued": f"{t['queued']:,}",
        "running": f"{t['running']:,}",
        "tasks-detail": f"24 h: {t['completed']:,} completed · {t['failed']:,} failed · "
        f"{t['cancelled']:,} cancelled",
        "requests": f"{sums['completed']} completed, {sums['failed']} failed, "
        f"{sums['cancelled']} cancelled",
        "latency-bars": len(data["latency_histogram"]),
        "tools": sorted(u["tool"] for u in data["tool_usage"]),
        "cost-days": [
            f"{d['day']}{' (today)' if i == len(days) - 1 else ''}: {usd(d['cost_usd'])}"
            for i, d in enumerate(days)
        ],
        "queues": [
            [q["name"], f"{q['depth']:,}"]
            for q in sorted(data["queues"], key=lambda q: order.get(q["name"], 9))
        ],
        "providers": [
            [p["model"], p["provider"], p["circuit"], f"{p['calls_24h']:,}", f"{p['errors_24h']:,}"]
            for p in data["providers"]
        ],
        "budgets": [
            [
                scope,
                "no cap" if budgets[scope]["cap_usd"] is None else usd(budgets[scope]["cap_usd"]),
                usd(budgets[scope]["spent_usd"]),
                usd(budgets[scope]["reserved_usd"]),
                remaining(budgets[scope]),
            ]
            for scope in ("tenant", "global")
        ],
    }


SHOWN_VIEW = """() => {
  const text = (sel) => { const n = document.querySelector(sel); return n ? n.textContent : null; };
  const all = (sel) => [...document.querySelectorAll(sel)];
  const cell = (tr, c) => (c.startsWith("@") ? tr.getAttribute(c.slice(1))
                                              : tr.querySelector(c).textContent);
  const rows = (sel, cells) => all(sel).map((tr) => cells.map((c) => cell(tr, c)));
  const chart = document.querySelector("#requests-chart svg");
  const requests = chart ? chart.getAttribute("aria-label") : null;
  const match = (requests || "").match(/: (\\d+ completed, \\d+ failed, \\d+ cancelled)$/);
  return {
    "success-rate": text("#success-rate"),
    "error-rate": text("#error-rate"),
    "avg-latency": text("#avg-latency"),
    "cost-today": text("#cost-today"),
    "queued": text("#queued"),
    "running": text("#running"),
    "tasks-detail": text("#tasks-detail"),
    "requests": match ? match[1] : requests,
    "latency-bars": all("#latency-chart rect.bar-latency").length,
    "tools": all("#tools-chart [data-tool]").map((g) => g.dataset.tool).sort(),
    "cost-days": all("#cost-chart .bar-group > title").map((t) => t.textContent),
    "queues": rows("#queues tbody tr", ["@data-queue", "td.depth"]),
    "providers": rows("#providers tbody tr",
                      ["@data-model", "td:nth-child(2)", "@data-circuit", "td.calls", "td.errors"]),
    "budgets": rows("#budgets tbody tr",
                    ["@data-scope", "td.cap", "td.spent", "td.reserved", "td.remaining"]),
  };
}"""


def wait_until_page_matches(page: Any, stack: Stack, timeout: float = 30) -> dict[str, Any]:
    """Until the page shows exactly what the endpoint returns now (the page polls every
    3 s, so a value that just changed takes a poll to appear); returns that JSON."""
    seen: dict[str, Any] = {}

    def matches() -> dict[str, Any] | None:
        data = dashboard_data(stack)
        seen.update(expected=expected_view(data), shown=page.evaluate(SHOWN_VIEW))
        return data if seen["shown"] == seen["expected"] else None

    try:
        return wait_for(matches, timeout=timeout, interval=0.25, what="the dashboard to match")
    except AssertionError:
        diff = {
            k: (seen["shown"].get(k), v)
            for k, v in seen["expected"].items()
            if seen["shown"].get(k) != v
        }
        raise AssertionError(f"dashboard differs from the JSON (shown, expected): {diff}") from None


# ---- tests --------------------------------------------------------------------------------


def test_dashboard_shows_the_live_numbers(stack: Stack, live_url: str, browser: Any) -> None:
    from playwright.sync_api import Route, expect

    failing = submit(stack.client, FAILING)
    plain = submit(stack.client, {"input": "Hi"})
    assert wait_terminal(stack.client, failing)["status"] == "failed"
    assert wait_terminal(stack.client, plain)["status"] == "completed"

    watched = Watched(browser)
    page = watched.page
    try:
        page.goto(f"{live_url}/dashboard")
        expect(page.locator("#updated")).to_have_attribute("data-state", "ok", timeout=30_000)
        before = wait_until_page_matches(page, stack)
        assert before["totals"]["failed"] >= 1 and before["totals"]["completed"] >= 1
        assert page.text_content("#success-rate") == pct(before["totals"]["success_rate"])
        assert page.text_content("#success-rate") != "—"
        assert re.fullmatch(r"Updated \d+s ago", page.text_content("#updated") or "")
        names = [q["name"] for q in before["queues"]]
        assert sorted(names) == ["default", "high", "low"]
        assert [r[0] for r in page.evaluate(SHOWN_VIEW)["queues"]] == ["high", "default", "low"]
        assert DEFAULT_MODEL in (page.text_content("#providers") or "")
        assert page.get_attribute("a[href='/']", "href") == "/"
        assert page.get_attribute("a[href='/openapi.json']", "href") == "/openapi.json"

        # One failed poll: the numbers stay, a warning shows, the next poll clears it.
        failed_once: list[str] = []

        def fail_once(route: Route) -> None:
            if failed_once:
                route.continue_()
            else:
                failed_once.append(route.request.url)
                route.fulfill(
                    status=503,
                    json={"error": {"code": "unavailable", "message": "injected failure"}},
                )

        page.route("**/agent/dashboard/data", fail_once)
        expect(page.locator("#poll-error")).to_contain_text("injected failure", timeout=10_000)
        assert page.text_content("#success-rate") == pct(before["totals"]["success_rate"])
        expect(page.locator("#poll-error")).to_be_hidden(timeout=10_000)
        page.unroute("**/agent/dashboard/data")

        # New work shows up without a reload.
        calc = submit(stack.client, {"input": CALCULATION})
        assert "391" in str(wait_terminal(stack.client, calc)["result"])
        after = wait_until_page_matches(page, stack)
        assert after["totals"]["completed"] > before["totals"]["completed"]
        assert "calculator" in (page.text_content("#tools-chart") or "")
        assert page.text_content("#cost-today") == usd(after["totals"]["cost_today_usd"])
        screenshot(page, "dashboard.png")

        assert watched.foreign_requests() == []
        assert any(u.endswith("/agent/dashboard/data") for u in watched.urls)
        assert watched.errors == []
    finally:
        watched.close()


def test_form_runs_a_calculation(stack: Stack, live_url: str, browser: Any) -> None:
    from playwright.sync_api import expect

    watched = Watched(browser)
    page = watched.page
    try:
        page.goto(f"{live_url}/")
        page.fill("#input", CALCULATION)
        page.click("#submit")
        expect(page.locator("#result")).to_contain_text("391", timeout=60_000)
        expect(page.locator("#status")).to_have_text("completed")
        screenshot(page, "form.png")
        assert watched.foreign_requests() == []
        assert watched.errors == []
    finally:
        watched.close()


def test_form_continues_a_conversation(stack: Stack, live_url: str, browser: Any) -> None:
    from playwright.sync_api import expect

    watched = Watched(browser)
    page = watched.page
    try:
        page.goto(f"{live_url}/")
        expect(page.locator("#continue")).to_be_disabled()
        page.fill("#input", "Please remember this: the door code is 2468.")
        page.click("#submit")
        expect(page.locator("#status")).to_have_text("completed", timeout=60_000)
        page.check("#continue")
        page.fill("#input", r"What was the door code? [recall:door code is (\d+)]")
        page.click("#submit")
        expect(page.locator("#result")).to_have_text("From earlier: 2468", timeout=60_000)
        screenshot(page, "form-thread.png")
        assert watched.errors == []
    finally:
        watched.close()


def test_pages_send_the_api_key_once_keys_exist(
    api: FlaskClient, live_api: str, browser: Any
) -> None:
    """Once a key exists the pages are refused (401) until one is entered in the key
    field; then every request carries it, the form's event stream included, and it
    stays for the tab (sessionStorage) when moving between the pages."""
    from playwright.sync_api import expect

    key = create_key(api.application.extensions["celeriac"].services.db, "browser")
    watched = Watched(browser)
    page = watched.page
    try:
        page.goto(f"{live_api}/dashboard")
        expect(page.locator("#key-status")).to_contain_text("needs an API key", timeout=15_000)
        expect(page.locator("#poll-error")).to_contain_text("Waiting for an API key")
        assert page.text_content("#queued") == "—"
        screenshot(page, "dashboard-needs-key.png")
        page.fill("#api-key", key)
        page.click("#key-use")
        expect(page.locator("#updated")).to_have_attribute("data-state", "ok", timeout=15_000)
        expect(page.locator("#key-status")).to_be_hidden()
        assert page.text_content("#queued") == "0"

        page.click("a[href='/']")  # same tab: the key comes along
        expect(page.locator("#api-key")).to_have_value(key)
        page.fill("#input", "Hi")
        page.click("#submit")
        expect(page.locator("#live")).to_have_text("Live: streaming updates", timeout=15_000)
        expect(page.locator("#created-at")).not_to_have_text("—")  # a status event arrived
        expect(page.locator("#status")).to_have_text("queued")  # no worker here
        expect(page.locator("#recent li")).to_have_count(1)
        assert page.locator("#key-status").is_hidden()
        assert watched.foreign_requests() == []
        assert watched.errors == []
    finally:
        watched.close()
