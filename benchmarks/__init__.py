"""Benchmarks for bluestreak: ``python -m benchmarks --help``.

Measured, never assumed: throughput, latency (queue and execution), MongoDB
commands and bytes per workflow, worker CPU and RSS, the memory of a worker
holding 100,000 sleeping workflows, wake-up latency, the claim's query plan,
and a profile of the library's own CPU. Results go to benchmarks/results/.
See docs/performance.md.
"""
