"""The regression suite's files and commands on synthetic results (fast: nothing is timed).

The suite itself runs end to end in CI (.ci/run, the quick suite as a smoke test)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import compare, cpu, result
from benchmarks.__main__ import main
from benchmarks.suite import SECTIONS, cuda_device, flatten_gpu, run_suite, spread

RATIO_FAMILIES = ("cpu.matvec.", "cpu.decode.", "cpu.prefill.", "cpu.prefill512.", "guest.decode.", "gpu.")


def synthetic(rng: np.random.Generator, suite: str = "quick") -> dict:
    """A valid result with random numbers in every part the commands read."""
    types, shapes = ("Q4_K_M", "Q8_0"), ("2048x2048", "32000x2048")
    metrics = {"cpu.copy.gb_s": float(rng.uniform(2, 20))}
    ratios = {}
    for t in types:
        for phase in ("prefill", "prefill512", "decode"):
            ours, theirs = rng.uniform(5, 60, 2)
            metrics[f"cpu.{phase}.{t}.tok_s"] = float(ours)
            metrics[f"cpu.{phase}.{t}.llama_cpp.tok_s"] = float(theirs)
            ratios[f"cpu.{phase}.{t}.vs_llama_cpp"] = float(ours / theirs)
    for t in ("Q4_K", "Q6_K"):
        for shape in shapes:
            gbs = float(rng.uniform(2, 20))
            metrics[f"cpu.matvec.{t}.{shape}.gb_s"] = gbs
            ratios[f"cpu.matvec.{t}.{shape}.vs_copy"] = gbs / metrics["cpu.copy.gb_s"]
    ratios["guest.decode.tiny.wasmtime.vs_direct"] = float(rng.uniform(0.8, 1.0))
    return {
        "schema": result.SCHEMA,
        "suite": suite,
        "repeat": 3,
        "threads": 2,
        "command": f"python -m benchmarks run --suite {suite}",
        "machine": {"date": "2026-01-01T00:00:00+00:00", "cpu": {"model": "Test CPU", "cores": 2}},
        "metrics": metrics,
        "ratios": ratios,
        "skipped": {"gpu": "cupy sees no CUDA device"},
        "seconds": {"cpu_kernels": 1.0},
        "sections": {},
    }


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


# ---- compare -------------------------------------------------------------------------


def test_compare_fails_on_a_ratio_more_than_tolerance_below(rng, tmp_path, capsys):
    res = synthetic(rng)
    base = result.make_baseline(res)
    victim = sorted(res["ratios"])[int(rng.integers(len(res["ratios"])))]
    drop = rng.uniform(0.11, 0.5)
    res["ratios"][victim] = base["ratios"][victim]["value"] * (1 - drop)
    rc = main(
        ["compare", str(write(tmp_path, "r.json", res)), "--baseline", str(write(tmp_path, "b.json", base))]
    )
    out = capsys.readouterr().out
    assert rc == 1
    line = next(ln for ln in out.splitlines() if ln.startswith(victim + " "))
    assert line.split()[-1] == compare.FAIL
    assert float(line.split()[-2].rstrip("%")) == pytest.approx(-100 * drop, abs=0.06)
    assert sum(ln.endswith(f" {compare.FAIL}") for ln in out.splitlines()) == 1


def test_compare_passes_within_tolerance_and_reports_missing(rng, tmp_path, capsys):
    res = synthetic(rng)
    base = result.make_baseline(res)
    for name in res["ratios"]:  # every ratio up to 9% worse, or better
        res["ratios"][name] = base["ratios"][name]["value"] * rng.uniform(0.91, 1.5)
    gone = sorted(res["ratios"])[: int(rng.integers(1, 4))]
    for name in gone:
        del res["ratios"][name]
    base["ratios"]["gpu.e2e.decode.Q4_K_M.vs_llama_cpp"] = {"value": 1.2, "higher_is_better": True}
    rc = main(
        ["compare", str(write(tmp_path, "r.json", res)), "--baseline", str(write(tmp_path, "b.json", base))]
    )
    out = capsys.readouterr().out
    assert rc == 0
    missing = {ln.split()[0] for ln in out.splitlines() if ln.endswith(f" {compare.MISSING}")}
    assert missing == {*gone, "gpu.e2e.decode.Q4_K_M.vs_llama_cpp"}
    assert f"{len(res['ratios'])} ok, 0 FAIL, {len(missing)} missing, 0 new" in out


def test_compare_rows_directions_tolerance_and_new(rng):
    base_value = float(rng.uniform(0.5, 2))
    baseline = {
        "schema": 1,
        "meta": {},
        "ratios": {
            "x.up.vs_a": {"value": base_value, "higher_is_better": True},
            "x.down.vs_a": {"value": base_value, "higher_is_better": False},
        },
    }
    tol = float(rng.uniform(0.05, 0.3))

    def statuses(factor: float) -> dict[str, str]:
        ratios = {"x.up.vs_a": base_value * factor, "x.down.vs_a": base_value * factor, "x.new.vs_a": 1.0}
        return {r.metric: r.status for r in compare.compare({"ratios": ratios}, baseline, tol)}

    assert statuses(1 - tol * 0.9) == {"x.down.vs_a": "ok", "x.up.vs_a": "ok", "x.new.vs_a": "new"}
    assert statuses(1 - tol * 1.1)["x.up.vs_a"] == "FAIL"
    assert statuses(1 - tol * 1.1)["x.down.vs_a"] == "ok"  # lower is better: it improved
    assert statuses(1 + tol * 1.1)["x.down.vs_a"] == "FAIL"
    row = compare.compare({"ratios": {"x.up.vs_a": base_value * 1.25}}, baseline, tol)[1]
    assert row.change == pytest.approx(0.25)


# ---- schema --------------------------------------------------------------------------


def test_result_schema_accepts_valid_and_names_each_fault(rng):
    res = synthetic(rng)
    assert result.result_problems(res) == []
    for t in cpu.TYPES:  # the full suite's model names (SmolLM2-Q4_1) are valid ones
        assert result.NAME.match(f"cpu.prefill512.{t}.vs_llama_cpp"), t
    name = sorted(res["metrics"])[0]
    faults = {
        "missing key 'ratios'": lambda r: r.pop("ratios"),
        "schema 2": lambda r: r.update(schema=2),
        "suite 'slow'": lambda r: r.update(suite="slow"),
        "repeat < 1": lambda r: r.update(repeat=0),
        f"metrics: {name} is not a finite number": lambda r: r["metrics"].update({name: math.nan}),
        "ratios: bad name 'Decode'": lambda r: r["ratios"].update(Decode=1.0),
        "ratios: cpu.x.vs_y is not > 0": lambda r: r["ratios"].update({"cpu.x.vs_y": -0.5}),
        "skipped: gpu has no reason": lambda r: r["skipped"].update(gpu=""),
        "machine lacks date or cpu": lambda r: r["machine"].pop("cpu"),
    }
    for expected, fault in faults.items():
        bad = json.loads(json.dumps(res))
        fault(bad)
        problems = result.result_problems(bad)
        assert any(expected in p for p in problems), (expected, problems)


def test_invalid_files_exit_2(rng, tmp_path, capsys):
    res = synthetic(rng)
    del res["metrics"]
    path = write(tmp_path, "r.json", res)
    assert main(["compare", str(path)]) == 2
    assert main(["plot", str(path), "--out-dir", str(tmp_path)]) == 2
    (tmp_path / "torn.json").write_text('{"schema": 1, ')
    assert main(["compare", str(tmp_path / "torn.json")]) == 2
    assert "missing key 'metrics'" in capsys.readouterr().err


def test_baseline_round_trip(rng, tmp_path):
    """A baseline keeps the ratios that survive a change of machine, and drops the rest."""
    res = synthetic(rng)
    portable = set(res["ratios"])
    res["ratios"]["cpu.decode.Q4_K_M.vs_read_roofline"] = 0.7
    res["ratios"]["tenants.m.guests8.vs_one_guest"] = 2.5
    out = tmp_path / "baseline.json"
    assert main(["baseline", str(write(tmp_path, "r.json", res)), "--out", str(out), "--note", "quiet"]) == 0
    base = result.load_baseline(out)
    assert base["meta"]["command"] == res["command"]
    assert base["meta"]["note"] == "quiet"
    assert set(base["ratios"]) == portable
    for name, entry in base["ratios"].items():
        assert entry["higher_is_better"] is True
        assert entry["value"] == pytest.approx(res["ratios"][name], abs=5e-5)
    rows = compare.compare(res, base)
    assert {r.metric for r in rows if r.status == compare.NEW} == set(res["ratios"]) - portable
    assert {r.status for r in rows if r.metric in portable} == {compare.OK}


def test_committed_baseline():
    """benchmarks/baseline.json: valid, from the full suite, only ratios that survive a
    change of machine (ours vs llama.cpp, vs copy bandwidth, guest vs direct)."""
    base = result.load_baseline(compare.DEFAULT_BASELINE)
    assert "--suite full" in base["meta"]["command"]
    assert base["ratios"]
    for name, entry in base["ratios"].items():
        assert name.startswith(RATIO_FAMILIES), name
        assert name.rsplit(".", 1)[1] in result.BASELINE_RATIOS, name
        assert 0.05 < entry["value"] < 20, name
    for phase in ("prefill", "decode"):
        assert f"cpu.{phase}.Q4_K_M.vs_llama_cpp" in base["ratios"]


# ---- the suite's pieces that need no timing ------------------------------------------


def test_spread(rng):
    runs = [synthetic(rng) for _ in range(3)]
    runs[1]["ratios"]["only.here.vs_x"] = 1.0
    s = spread(runs)
    assert set(s) == set(runs[0]["ratios"])
    for name, v in s.items():
        values = [r["ratios"][name] for r in runs]
        assert v == pytest.approx(max(values) / min(values) - 1)


def test_flatten_gpu_both_layouts(rng):
    a, b = (float(x) for x in rng.uniform(0.1, 10, 2))
    flat = {"metrics": {"gpu.copy.gb_s": a}, "ratios": {"matvec.Q4_K.vs_copy": b}}
    assert flatten_gpu(flat, "gpu_kernels") == ({"gpu.copy.gb_s": a}, {"gpu.matvec.Q4_K.vs_copy": b})
    nested = {"decode": {"Q4_K_M": {"tok_s": a, "vs_direct": b, "ok": True}}, "device": "X"}
    assert flatten_gpu(nested, "gpu") == (
        {"gpu.e2e.decode.Q4_K_M.tok_s": a},
        {"gpu.e2e.decode.Q4_K_M.vs_direct": b},
    )


def test_gpu_section_skips_with_its_reason(tmp_path):
    why = cuda_device()
    if why is None:
        pytest.skip("a CUDA device is present: the GPU section would run")
    res = run_suite("quick", sections=["gpu"], models_dir=tmp_path)
    assert res["skipped"]["gpu"] == why
    assert "gpu" not in res["sections"]
    assert not any(k.startswith("gpu.") for k in (*res["metrics"], *res["ratios"]))
    assert result.result_problems(res) == []
    assert res["machine"]["cpu"]["cores"] >= 1
    assert set(SECTIONS) == {"cpu_kernels", "cpu_e2e", "guest", "tenants", "gpu"}


def test_table_rows_carry_the_numbers(rng, capsys):
    from benchmarks.report import markdown

    res = synthetic(rng)
    text = markdown(res)
    m, r = res["metrics"], res["ratios"]
    for t in ("Q4_K_M", "Q8_0"):
        cells = [
            cell
            for phase in ("prefill", "prefill512", "decode")
            for cell in (
                f"{m[f'cpu.{phase}.{t}.tok_s']:.1f}",
                f"{m[f'cpu.{phase}.{t}.llama_cpp.tok_s']:.1f}",
                f"{r[f'cpu.{phase}.{t}.vs_llama_cpp']:.2f}",
            )
        ]
        assert f"| {t} | " + " | ".join(cells) + " |" in text
    q6 = next(ln for ln in text.splitlines() if ln.startswith("| Q6_K |"))
    assert (
        f"{m['cpu.matvec.Q6_K.32000x2048.gb_s']:.2f} ({r['cpu.matvec.Q6_K.32000x2048.vs_copy']:.2f}x)" in q6
    )
    assert "skipped gpu: cupy sees no CUDA device" in text


# ---- plot ----------------------------------------------------------------------------


def test_plot_writes_each_chart(rng, tmp_path):
    image = pytest.importorskip("matplotlib.image")
    res = synthetic(rng)
    path = write(tmp_path, "r.json", res)
    assert main(["plot", str(path), "--out-dir", str(tmp_path / "full")]) == 0
    for name in ("tok_s.png", "matvec_gb_s.png", "ratios.png"):
        pixels = image.imread(tmp_path / "full" / name)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
        assert pixels.std() > 0.05  # something is drawn on the white
    # a result without end-to-end numbers (no llama.cpp, no model runs): no tok/s chart
    res["metrics"] = {k: v for k, v in res["metrics"].items() if not k.endswith("tok_s")}
    assert main(["plot", str(write(tmp_path, "r2.json", res)), "--out-dir", str(tmp_path / "part")]) == 0
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == ["matvec_gb_s.png", "ratios.png"]
