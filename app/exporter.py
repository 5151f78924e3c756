"""The Prometheus exporter: its own process, serving on :9808 what every worker
process on every host recorded in Redis (see celeriac.metrics).

Run: ``python -m app.exporter [--host 127.0.0.1] [--port 9808]``
"""

from __future__ import annotations

import argparse
import sys
import time

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY

from celeriac.gauges import live_gauges
from celeriac.metrics import RedisCollector
from celeriac.services import Services
from config.logging import configure_logging
from config.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.exporter", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9808)
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    services = Services(settings)
    REGISTRY.register(RedisCollector(services.redis, lambda: live_gauges(services)))
    start_http_server(args.port, addr=args.host)
    print(f"exporter serving http://{args.host}:{args.port}/metrics", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
