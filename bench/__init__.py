"""kflow's benchmark suite (see bench/README.md and BENCHMARKS.md).

``python -m bench.run [--quick]`` runs every scenario and figure in one
invocation and writes ``bench/results/<UTC date-time>.json`` and ``.md``.
Nothing here is collected by ``make test``.
"""
