"""Metrics exact across processes, live gauges, queue depths, and what finished steps
and runs report.
"""
