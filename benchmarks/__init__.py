"""Benchmarks: bounded, loopback only; results go to benchmarks/RESULTS.md."""
