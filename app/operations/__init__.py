"""Operator entry points: setup, rebuilds, lag, dead letters, the schema gate, the live dashboard,
demo and smoke runs, and the supervision of local processes."""
