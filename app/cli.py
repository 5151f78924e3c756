"""The ``celeriac`` command line.

    celeriac run                 start the whole system (what ``make run`` does)
    celeriac submit TEXT         submit a task through the HTTP API
    celeriac status TASK_ID      show a task's status
    celeriac cancel TASK_ID      cancel a task
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


def _call(method: str, url: str, **kwargs: Any) -> int:
    try:
        response = httpx.request(method, url, timeout=30, **kwargs)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {url}: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(response.json(), indent=2))
    except ValueError:
        print(response.text)
    return 0 if response.is_success else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="celeriac", description="Celeriac command line")
    parser.add_argument(
        "--url", default=os.environ.get("CELERIAC_URL", DEFAULT_URL), help="the web app's URL"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the whole system from the Procfile")
    submit = sub.add_parser("submit", help="submit a task")
    submit.add_argument("input", help="the user's message")
    submit.add_argument("--agent", default=None)
    submit.add_argument("--model", default=None)
    submit.add_argument("--priority", default=None, help="high, normal, low or 0-9")
    submit.add_argument("--budget-usd", type=float, default=None)
    for name in ("status", "cancel"):
        cmd = sub.add_parser(name, help=f"{name} a task")
        cmd.add_argument("task_id")
    args = parser.parse_args(argv)

    if args.command == "run":
        from app.launcher import main as launch

        return launch()
    if args.command == "submit":
        body: dict[str, Any] = {"input": args.input}
        for field in ("agent", "model", "budget_usd"):
            if getattr(args, field) is not None:
                body[field] = getattr(args, field)
        if args.priority is not None:
            body["priority"] = int(args.priority) if args.priority.isdigit() else args.priority
        return _call("POST", f"{args.url}/agent/run", json=body)
    if args.command == "status":
        return _call("GET", f"{args.url}/agent/status/{args.task_id}")
    return _call("POST", f"{args.url}/agent/cancel/{args.task_id}")


if __name__ == "__main__":
    sys.exit(main())
