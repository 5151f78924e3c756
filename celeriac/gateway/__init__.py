"""Calling providers safely: the caller, pacing and limits, the breaker, retries, the
response cache, the provider adapters.
"""
