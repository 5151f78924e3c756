"""The ``celeriac`` command line.

    celeriac run                 start the whole system (what ``make run`` does)
    celeriac submit TEXT         submit a task through the HTTP API
    celeriac status TASK_ID      show a task's status
    celeriac cancel TASK_ID      cancel a task
    celeriac workers             list the workers that answer, their pools and queues
    celeriac scale grow|shrink N             resize worker pools (pool_grow/pool_shrink)
    celeriac scale add-queue|remove-queue Q  start/stop consuming a queue
    celeriac keys create TENANT  make an API key (printed last, once)
    celeriac keys revoke KEY     revoke it
    celeriac db upgrade          migrate the store's schema to the newest revision
    celeriac db current          show the store's revision (exit 1 when behind)

``workers`` and ``scale`` talk to the workers through the broker (Celery's remote
control), so they need ``REDIS_URL`` or ``BROKER_URL``, not the web app.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from celery import Celery

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
    submit.add_argument("--thread", dest="thread_id", default=None,
                        help="continue this conversation (a thread_id from an earlier answer)")
    for name in ("status", "cancel"):
        cmd = sub.add_parser(name, help=f"{name} a task")
        cmd.add_argument("task_id")
    _add_worker_commands(sub)
    _add_key_commands(sub)
    _add_db_commands(sub)
    args = parser.parse_args(argv)

    if args.command == "run":
        from app.launcher import main as launch

        return launch()
    if args.command == "submit":
        body: dict[str, Any] = {"input": args.input}
        for field in ("agent", "model", "budget_usd", "thread_id"):
            if getattr(args, field) is not None:
                body[field] = getattr(args, field)
        if args.priority is not None:
            body["priority"] = int(args.priority) if args.priority.isdigit() else args.priority
        return _call("POST", f"{args.url}/agent/run", json=body)
    if args.command == "status":
        return _call("GET", f"{args.url}/agent/status/{args.task_id}")
    if args.command == "keys":
        return _keys(args)
    if args.command == "db":
        return _db(args)
    if args.command in ("workers", "scale"):
        client = _celery_client()
        try:
            error = _broker_error(client)
            if error:
                print(error, file=sys.stderr)
                return 2
            return _workers(client, args) if args.command == "workers" else _scale(client, args)
        finally:
            client.close()
    return _call("POST", f"{args.url}/agent/cancel/{args.task_id}")


# --- keys: API keys mapped to tenants, straight in the store --------------------------


def _add_key_commands(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create or revoke API keys",
                          description="API keys map requests to tenants. Once any key "
                          "exists, every /agent/* request needs one.")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key for TENANT; prints it last")
    create.add_argument("tenant")
    revoke = actions.add_parser("revoke", help="revoke KEY")
    revoke.add_argument("key")


def _keys(args: argparse.Namespace) -> int:
    from celeriac.api_keys import create_key, revoke_key
    from celeriac.errors import InvalidRequest
    from celeriac.store import Database
    from config.settings import Settings

    db = Database(Settings().database_url)
    db.create_schema()
    try:
        if args.action == "create":
            try:
                key = create_key(db, args.tenant)
            except InvalidRequest as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return 2
            print(f"API key for tenant {args.tenant!r} (shown once; store it now):")
            print(key)
            return 0
        if revoke_key(db, args.key):
            print("revoked")
            return 0
        print("error: no such active key", file=sys.stderr)
        return 1
    finally:
        db.dispose()


# --- db: schema migrations (what every process also does at start-up) ----------------


def _add_db_commands(sub: Any) -> None:
    db = sub.add_parser("db", help="migrate the store's schema",
                        description="Schema migrations (Alembic) on DATABASE_URL. Every "
                        "process also upgrades at start-up; these are for operators.")
    actions = db.add_subparsers(dest="action", required=True)
    actions.add_parser("upgrade", help="upgrade to the newest revision (adopts a database "
                       "made before migrations existed)")
    actions.add_parser("current", help="print the database's revision and the newest; "
                       "exit 1 when it is behind")


def _db(args: argparse.Namespace) -> int:
    from celeriac.errors import SchemaError
    from celeriac.store import Database, migrate
    from config.settings import Settings

    db = Database(Settings().database_url)
    head = migrate.head()
    try:
        if args.action == "upgrade":
            try:
                before = db.create_schema()
            except SchemaError as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
            was = {None: "empty", "adopted": "made before migrations; adopted"}.get(
                before, before)
            print(f"at {db.schema_revision()} (was {was})")
            return 0
        current = db.schema_revision()
        if current == head:
            print(f"{current} (head)")
            return 0
        print(f"{current or 'none'} (head is {head}; run `celeriac db upgrade`, "
              "or start any Celeriac process)")
        return 1
    finally:
        db.dispose()


# --- workers and scale: Celery's remote control over the broker ----------------------

_SCALE_COMMANDS = {
    # subcommand -> (Celery control command, its argument, what it does)
    # Only prefork pools without --autoscale resize; threads and gevent pools refuse.
    "grow": ("pool_grow", "n", "add N processes to each worker's prefork pool"),
    "shrink": ("pool_shrink", "n", "remove N processes from each worker's prefork pool"),
    "add-queue": ("add_consumer", "queue", "make the workers consume queue Q too"),
    "remove-queue": ("cancel_consumer", "queue", "make the workers stop consuming queue Q"),
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _add_worker_commands(sub: Any) -> None:
    def remote(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--destination", "-d", action="append", metavar="NAME",
                         help="only this worker (node name, e.g. worker1@host); repeatable")
        cmd.add_argument("--timeout", type=float, default=1.0,
                         help="seconds to wait for replies (default %(default)s)")

    workers = sub.add_parser("workers", help="list the workers that answer, and their queues",
                             description="List the workers that answer a ping, with their "
                             "pool and the queues they consume. Exit 1 if none answers.")
    workers.add_argument("--json", action="store_true", help="print JSON")
    remote(workers)
    scale = sub.add_parser("scale", help="resize worker pools, add or remove queues",
                           description="Send a remote-control command to the workers "
                           "(all of them, or --destination). Exit 1 if none answers or "
                           "any refuses.")
    actions = scale.add_subparsers(dest="action", required=True)
    for name, (command, argument, text) in _SCALE_COMMANDS.items():
        cmd = actions.add_parser(name, help=text, description=f"{text} (Celery {command}).")
        if argument == "n":
            cmd.add_argument("n", type=_positive, metavar="N")
        else:
            cmd.add_argument("queue", metavar="Q")
        remote(cmd)


def _celery_client() -> Celery:
    """A Celery client with the workers' configuration; connects to nothing yet."""
    from celery import Celery

    from config.celery import celery_config
    from config.settings import Settings

    client = Celery("celeriac-cli", set_as_current=False)
    client.conf.update(celery_config(Settings()))
    return client


def _broker_error(client: Celery) -> str | None:
    from kombu.exceptions import OperationalError

    try:
        with client.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except (OperationalError, OSError) as exc:
        return f"error: cannot reach the broker: {exc}"
    return None


def _workers(client: Celery, args: argparse.Namespace) -> int:
    limit = len(args.destination) if args.destination else None  # else wait for all
    replies = client.control.ping(destination=args.destination, timeout=args.timeout,
                                  limit=limit)
    names = sorted(name for reply in replies for name in reply)
    if not names:
        print(f"error: no workers answered within {args.timeout} s", file=sys.stderr)
        return 1
    # Ask only the workers that answered, and stop waiting once they all replied.
    inspect = client.control.inspect(destination=names, timeout=args.timeout,
                                     limit=len(names))
    queues = inspect.active_queues() or {}
    stats = inspect.stats() or {}
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        pool = stats.get(name, {}).get("pool", {})
        implementation = str(pool.get("implementation", "?"))
        processes = pool.get("processes")
        autoscale = stats.get(name, {}).get("autoscaler") or {}
        found[name] = {
            "queues": [q["name"] for q in queues.get(name, [])],
            "pool": implementation.rpartition(".")[2].split(":")[0],
            "concurrency": len(processes) if isinstance(processes, list)
            else pool.get("max-concurrency"),
            # Celery's own --autoscale=MAX,MIN, when the worker runs with it.
            "autoscale": [autoscale["max"], autoscale["min"]] if "max" in autoscale else None,
        }
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    width = max(len(name) for name in found)
    for name, info in found.items():
        scaled = (f" autoscale={info['autoscale'][0]},{info['autoscale'][1]}"
                  if info["autoscale"] else "")
        print(f"{name:<{width}}  pool={info['pool']} concurrency={info['concurrency']}{scaled}"
              f"  queues={','.join(info['queues']) or '-'}")
    return 0


def _scale(client: Celery, args: argparse.Namespace) -> int:
    command, argument, _ = _SCALE_COMMANDS[args.action]
    value = getattr(args, argument)
    limit = len(args.destination) if args.destination else None
    replies = client.control.broadcast(
        command, arguments={argument: value}, destination=args.destination, reply=True,
        timeout=args.timeout, limit=limit)
    answers = sorted(((name, answer) for reply in replies or [] for name, answer in reply.items()),
                     key=lambda item: item[0])
    if not answers:
        print(f"error: no workers answered within {args.timeout} s", file=sys.stderr)
        return 1
    failed = False
    for name, answer in answers:
        if isinstance(answer, dict) and "ok" in answer:
            print(f"{name}: ok: {answer['ok']}")
        else:
            failed = True
            detail = answer.get("error", answer) if isinstance(answer, dict) else answer
            print(f"{name}: error: {detail}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
