"""Run the simulator as its own process.

    python -m simulator --host 127.0.0.1 --port 8765 \
        [--latency-ms N] [--rpm N] [--fault-rate F] [--seed S] [--log PATH]

It prints one "listening on" line once it accepts connections, and stops cleanly on
SIGINT or SIGTERM. Bad arguments print a message and exit with status 2; a port
that cannot be bound exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from simulator.config import ConfigError, SimConfig
from simulator.server import Simulator, serve

# A thousand concurrent agents need a thousand sockets; 1024 is a common soft limit.
WANTED_OPEN_FILES = 65536


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    require_key = None
    if args.require_key_env:
        require_key = os.environ.get(args.require_key_env)
        if not require_key:
            parser.error(f"--require-key-env: ${args.require_key_env} is not set")
    try:
        config = SimConfig(
            latency_ms=args.latency_ms,
            rpm=args.rpm,
            fault_rate=args.fault_rate,
            seed=args.seed,
            retry_after_s=args.retry_after_s,
            timeout_s=args.timeout_s,
            require_key=require_key,
            log_path=args.log,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _raise_open_file_limit()
    try:
        asyncio.run(_run(args.host, args.port, config))
    except OSError as exc:
        print(
            f"celeriac simulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr
        )
        return 1
    return 0


async def _run(host: str, port: int, config: SimConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def started(bound: int, simulator: Simulator) -> None:
        print(f"celeriac simulator listening on http://{host}:{bound}", flush=True)

    await serve(host, port, config, stop, started)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Simulated Anthropic and OpenAI provider for offline runs.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=_port, default=8765)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answering")
    parser.add_argument("--rpm", type=int, default=0, help="requests per minute; 0: no limit")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="random fault chance")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault dice")
    parser.add_argument("--retry-after-s", type=float, default=1.0, help="retry-after of 429s")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="hold of timeout faults")
    parser.add_argument("--log", metavar="PATH", help="append the request log here as JSON lines")
    parser.add_argument(
        "--require-key-env",
        metavar="NAME",
        help="accept only the API key held in this environment variable "
        "(an environment variable, so the key stays out of the process list)",
    )
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, not {port}")
    return port


def _raise_open_file_limit() -> None:
    try:
        import resource  # POSIX only
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, WANTED_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


if __name__ == "__main__":
    sys.exit(main())
