"""Nothing accepted is lost and nothing paid for twice: leases, holdings, the step
journal, lost calls, recovery, outages.
"""
