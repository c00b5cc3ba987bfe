"""benchmarks.bench_attention at a short window (the speed means nothing here; this
checks the code and the arithmetic of what it reports)."""

from __future__ import annotations

import pytest

from benchmarks import bench_attention


def test_attention_benchmark_reports_consistent_figures() -> None:
    r = bench_attention.run(position=20, repeat=2, threads=1, flush_mb=1)
    assert r["position"] == 20 and r["ms_per_token"] > 0 and r["copy_gbs"] > 0
    kv_bytes = 2 * bench_attention.N_LAYER * 21 * bench_attention.N_HEAD_KV * bench_attention.HEAD_DIM * 2
    assert r["kv_gbs"] == pytest.approx(kv_bytes / (r["ms_per_token"] / 1e3) / 1e9)
    assert r["kv_vs_copy"] == pytest.approx(r["kv_gbs"] / r["copy_gbs"])
