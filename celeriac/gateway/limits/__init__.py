"""Limits that hold across every worker process and host: the rate limiter, the
circuit breaker and provider feedback (slowdowns, pauses), all kept in Redis and
changed atomically."""
