"""Performance benchmarks: each prints a number and a ratio against a baseline measured
in the same run (see README.md).

`python -m benchmarks run|compare|plot` is the regression suite over all of them
(benchmarks.suite); cpu, guest, bench_matvec, bench_attention and bench_quant also run on their own."""
