"""
Benchmark tooling, apart from the inference path: timing of interleaved modes
(``timing``), FLOP counting (``flops``), and runs in a fresh worker process (``isolated_runs``).
Command: projects/SFNet/benchmark.py; user documentation: docs/BENCHMARK.md.
"""
