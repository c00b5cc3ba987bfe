"""Performance benchmarks: each prints a number and a ratio against a baseline measured
in the same run (see README.md)."""
