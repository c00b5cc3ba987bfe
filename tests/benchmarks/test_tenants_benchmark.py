"""benchmarks.tenants end to end on the tiny model: every measurement, directly and
through the server, its plot, and the suite's numbers from it (the numbers mean nothing
here; this checks the code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import tenants
from benchmarks.result import NAME
from benchmarks.suite import tenants_numbers
from benchmarks.tenants import decode_rate


def test_tenants_benchmark_runs_end_to_end(model_path, tmp_path: Path) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("matplotlib")
    path = model_path("Q8_0")
    result = tenants.run([path], [1, 3], tokens=6, long_prompt=64, threads=2, server=True)
    m = result["models"][path.name]
    for rows in (m["concurrency"], m["server"]):
        assert [r["guests"] for r in rows] == [1, 3]
        assert [r["tokens"] for r in rows] == [6, 18]  # greedy, no stop at EOS: every token
        assert rows[0]["ratio_to_one"] == 1.0 and all(r["aggregate_tok_s"] > 0 for r in rows)
        assert all(0 < r["ttft"]["p50_ms"] <= r["ttft"]["p99_ms"] for r in rows)
        assert rows[0]["decode_ratio_to_one"] == 1.0 and rows[0]["decode_tok_s"] > 0
    assert m["concurrency"][0]["calls_per_step"] == 1.0  # one guest: one call per step
    nb = m["neighbour"]
    assert nb["long_prompt_tokens"] == 64 and nb["itl_alone"]["p99_ms"] > 0 and nb["p99_ratio"] > 0
    tenants.plot(result, tmp_path / "tenants.png")
    assert (tmp_path / "tenants.png").stat().st_size > 1000
    metrics, ratios = tenants_numbers(result)
    name = "tenants." + path.stem.replace(".", "_")
    assert [k for k in (*metrics, *ratios) if not NAME.match(k)] == []
    assert ratios[f"{name}.guests3.vs_one_guest"] == m["concurrency"][1]["ratio_to_one"]
    assert ratios[f"{name}.server.guests3.vs_one_guest"] == m["server"][1]["ratio_to_one"]
    assert ratios[f"{name}.neighbour.alone_vs_beside_p99"] == 1 / nb["p99_ratio"]
    assert ratios[f"{name}.guests3.decode_vs_one_guest"] == m["concurrency"][1]["decode_ratio_to_one"]
    assert f"{name}.guests1.vs_one_guest" not in ratios  # one guest over itself says nothing
    assert metrics[f"{name}.server.guests1.tok_s"] == m["server"][0]["aggregate_tok_s"]
    assert metrics[f"{name}.neighbour.itl_p99_beside_ms"] == nb["itl_beside"]["p99_ms"]


def test_decode_rate_counts_the_pieces_while_all_decode() -> None:
    # request A streams at 0, 1, .., 10; B starts late (first piece at 4) and ends at 8:
    # from 4 to 8, A's pieces at 5..8 and B's at 5..8 (4 + 4 in 4 s)
    a = [float(t) for t in range(11)]
    b = [4.0, 5.0, 6.0, 7.0, 8.0]
    assert decode_rate([a, b]) == 8 / 4
    assert decode_rate([a]) == 10 / 10  # one request: its pieces after the first
    assert decode_rate([[0.0, 1.0], [2.0, 3.0]]) == 0.0  # never both decoding
