"""The workloads, in the order they run. Importing this package registers them all.

To add one: a module here with a ``@workload("name")`` function that returns plain
numbers, imported below and named in ``ORDER``; to announce one that cannot run yet,
``pending(name, reason)``.
"""

from bench.registry import REGISTRY, Workload, pending
from bench.workloads import api, memory, overhead, priority, throughput

pending("rate_limit", "not measured yet: no rate-limit workload written (the limiter is "
        "celeriac/limits/)")
pending("faults", "not measured yet: no fault-injection workload written")
pending("budget", "not measured yet: no budget workload written (budgets are celeriac/budget/)")

ORDER = ("throughput", "overhead", "api", "memory", "priority", "rate_limit", "faults",
         "budget")


def in_order() -> list[Workload]:
    known = [REGISTRY[name] for name in ORDER if name in REGISTRY]
    return known + [w for name, w in REGISTRY.items() if name not in ORDER]


__all__ = ["ORDER", "api", "in_order", "memory", "overhead", "priority", "throughput"]
