"""The numerical core: per-unit statistics, the solves, the searches and their certificates."""
