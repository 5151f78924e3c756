"""The workloads, in the order they run. Importing this package registers them all.

To add one: a module here with a ``@workload("name")`` function that returns plain
numbers, imported below and named in ``ORDER``; to announce one that cannot run yet,
``pending(name, reason)``.
"""

from bench.registry import REGISTRY, Workload
from bench.workloads import (
    api,
    budget,
    faults,
    memory,
    overhead,
    priority,
    ratelimit,
    slowclients,
    throughput,
)

ORDER = ("throughput", "overhead", "api", "slow_clients", "memory", "priority", "rate_limit",
         "faults", "budget")


def in_order() -> list[Workload]:
    known = [REGISTRY[name] for name in ORDER if name in REGISTRY]
    return known + [w for name, w in REGISTRY.items() if name not in ORDER]


__all__ = ["ORDER", "api", "budget", "faults", "in_order", "memory", "overhead", "priority",
           "ratelimit", "slowclients", "throughput"]
