"""Throughput and latency harness: the connector against a raw change-stream read and a naive loop.

Run it with `make bench` or `python -m benchmarks.run [--quick] [--workload W] [--only PART]`. These are
scripts that print numbers and write `benchmarks/results/latest.json`; nothing here is a test.
"""
