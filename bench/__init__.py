"""The benchmark: ``make bench`` (full) and ``make bench-quick`` (smoke-sized).

``python -m bench --help`` for the options. Layout: ``harness`` starts and stops the
processes a workload needs (``processes``, ``backends``), ``drivers`` submits work to
Celeriac and to the bare-Celery baseline (``bare``), ``workloads/`` holds one module
per workload (registered in ``registry``), ``runner`` repeats them and takes medians,
``report`` writes results.json and RESULTS.md.
"""
