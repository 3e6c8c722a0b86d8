"""
Benchmark tooling, apart from the inference path: the benchmark itself (``run``: modes, phases,
``run_benchmark``; ``report``: the printed table and the JSON), timing of interleaved tasks
(``timing``), runs in a fresh worker process (``isolated_runs``) and FLOP counting of a model's
network part (``flops``).
Commands: projects/SFNet/benchmark.py, projects/SFNet/analyze_model.py; user documentation:
docs/BENCHMARK.md.
"""
