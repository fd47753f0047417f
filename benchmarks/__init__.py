"""Benchmarks: commands, not timed tests. Each prints its figures and the command that produced them."""
