"""Domain layer of the executor: runs, limits, agents and configuration as plain values."""
