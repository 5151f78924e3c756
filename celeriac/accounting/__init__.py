"""Money: budget configuration, the Redis keeper that makes caps hold under any
concurrency, and the ledger in the store that is the record of what was spent."""
