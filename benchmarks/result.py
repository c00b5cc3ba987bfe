"""The suite's result and baseline files: their layout, checked on write and on read.

A result (``python -m benchmarks run``)::

    {"schema": 1, "suite": "quick" | "full", "repeat": N, "threads": T,
     "command": "python -m benchmarks run ...", "machine": {...},     # benchmarks.machine
     "metrics": {"cpu.decode.Q4_K_M.tok_s": 13.4, ...},               # absolute numbers
     "ratios": {"cpu.decode.Q4_K_M.vs_llama_cpp": 0.92, ...},         # same-run ratios
     "skipped": {"gpu": "why", ...}, "seconds": {"cpu_kernels": 12.3, ...},
     "sections": {"cpu_kernels": {...}, ...}}                          # raw section output

A baseline (benchmarks/baseline.json)::

    {"schema": 1, "meta": {"command": ..., "machine": ..., "date": ..., "commit": ...},
     "ratios": {"cpu.decode.Q4_K_M.vs_llama_cpp": {"value": 0.92, "higher_is_better": true}, ...}}

Names are dotted lower-level paths: section, what, format or shape, unit (``tok_s``,
``gb_s``, ``us``, ``bytes``) or, for a ratio, ``vs_<what it is divided by>``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

SCHEMA = 1
SUITES = ("quick", "full")
NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_-]+)+$")  # cpu.decode.SmolLM2-Q4_1.vs_llama_cpp
RESULT_KEYS = {
    "schema": int,
    "suite": str,
    "repeat": int,
    "threads": int,
    "command": str,
    "machine": dict,
    "metrics": dict,
    "ratios": dict,
    "skipped": dict,
    "seconds": dict,
    "sections": dict,
}


class SchemaError(ValueError):
    """A result or baseline file that does not have the layout above."""


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check_names(where: str, d: dict, problems: list[str]) -> None:
    for name in d:
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(f"{where}: bad name {name!r}")


def result_problems(result: object) -> list[str]:
    """Everything wrong with a result's layout (empty when it is valid)."""
    if not isinstance(result, dict):
        return ["a result is a JSON object"]
    problems = []
    for key, kind in RESULT_KEYS.items():
        if key not in result:
            problems.append(f"missing key {key!r}")
        elif not isinstance(result[key], kind) or isinstance(result[key], bool):
            problems.append(f"{key!r} is not a {kind.__name__}")
    if problems:
        return problems
    if result["schema"] != SCHEMA:
        problems.append(f"schema {result['schema']} (this code reads {SCHEMA})")
    if result["suite"] not in SUITES:
        problems.append(f"suite {result['suite']!r} not one of {SUITES}")
    if result["repeat"] < 1:
        problems.append("repeat < 1")
    for part in ("metrics", "ratios"):
        _check_names(part, result[part], problems)
        problems += [
            f"{part}: {k} is not a finite number" for k, v in result[part].items() if not _is_number(v)
        ]
    problems += [f"ratios: {k} is not > 0" for k, v in result["ratios"].items() if _is_number(v) and v <= 0]
    problems += [
        f"skipped: {k} has no reason" for k, v in result["skipped"].items() if not isinstance(v, str) or not v
    ]
    if "date" not in result["machine"] or "cpu" not in result["machine"]:
        problems.append("machine lacks date or cpu")
    return problems


def baseline_problems(baseline: object) -> list[str]:
    if not isinstance(baseline, dict):
        return ["a baseline is a JSON object"]
    if baseline.get("schema") != SCHEMA:
        return [f"schema {baseline.get('schema')!r} (this code reads {SCHEMA})"]
    if not isinstance(baseline.get("meta"), dict) or not isinstance(baseline.get("ratios"), dict):
        return ["a baseline has a 'meta' object and a 'ratios' object"]
    problems: list[str] = []
    _check_names("ratios", baseline["ratios"], problems)
    for name, entry in baseline["ratios"].items():
        ok = (
            isinstance(entry, dict)
            and _is_number(entry.get("value"))
            and entry["value"] > 0
            and isinstance(entry.get("higher_is_better"), bool)
        )
        if not ok:
            problems.append(f"ratios: {name} needs a positive 'value' and a boolean 'higher_is_better'")
    return problems


def _load(path: Path, check) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SchemaError(f"{path}: {e}") from e
    problems = check(data)
    if problems:
        raise SchemaError(f"{path}: " + "; ".join(problems))
    return data


def load_result(path: Path) -> dict:
    return _load(path, result_problems)


def load_baseline(path: Path) -> dict:
    return _load(path, baseline_problems)


# the ratios a baseline keeps: those that survive a change of machine (ours over
# llama.cpp's, over the copy bandwidth, a guest over the backend driven directly); the
# read roofline and the tenants' ratios move with the machine's memory and core count
BASELINE_RATIOS = ("vs_llama_cpp", "vs_copy", "vs_direct")


def make_baseline(result: dict, note: str | None = None) -> dict:
    """A baseline from a result: its BASELINE_RATIOS (every one higher-is-better: ours over
    theirs, over copy bandwidth, guest over direct), where they came from, and `note` if given."""
    m = result["machine"]
    git = m.get("git") or {}
    return {
        "schema": SCHEMA,
        "meta": {
            "command": result["command"],
            "suite": result["suite"],
            "repeat": result["repeat"],
            "threads": result["threads"],
            "date": m.get("date"),
            "commit": git.get("commit"),
            "cpu": m["cpu"].get("model"),
            "cores": m["cpu"].get("cores"),
            "gpu": m.get("gpu"),
            "load_average": [m.get("load_average"), m.get("load_average_end")],  # at the start, at the end
            **({"note": note} if note else {}),
        },
        "ratios": {
            k: {"value": round(v, 4), "higher_is_better": True}
            for k, v in sorted(result["ratios"].items())
            if k.rsplit(".", 1)[1] in BASELINE_RATIOS
        },
    }
