"""A result's ratios against the baseline's.

    python -m benchmarks compare RESULT.json [--baseline benchmarks/baseline.json] [--tolerance 0.10]

A ratio fails when it is worse than its baseline by more than the tolerance (for a
higher-is-better ratio: below baseline x (1 - tolerance)); the command then exits 1.
A baseline ratio the result lacks (a GPU-less run has no GPU ratios; a run without
llama_cpp none against it) is listed as missing and does not fail; a ratio the baseline
lacks is listed as new.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASELINE = Path(__file__).resolve().parent / "baseline.json"
DEFAULT_TOLERANCE = 0.10
OK, FAIL, MISSING, NEW = "ok", "FAIL", "missing", "new"


@dataclass(frozen=True)
class Row:
    metric: str
    baseline: float | None
    result: float | None
    status: str

    @property
    def change(self) -> float | None:
        """Relative change of the result from the baseline (+0.05: 5% higher)."""
        if self.baseline is None or self.result is None:
            return None
        return self.result / self.baseline - 1


def compare(result: dict, baseline: dict, tolerance: float = DEFAULT_TOLERANCE) -> list[Row]:
    """One row per ratio of either file: baseline ratios in name order, then new ones."""
    got = result["ratios"]
    rows = []
    for name, entry in sorted(baseline["ratios"].items()):
        base = entry["value"]
        if name not in got:
            rows.append(Row(name, base, None, MISSING))
            continue
        value = got[name]
        worse = (
            value < base * (1 - tolerance) if entry["higher_is_better"] else value > base * (1 + tolerance)
        )
        rows.append(Row(name, base, value, FAIL if worse else OK))
    rows += [Row(name, None, got[name], NEW) for name in sorted(set(got) - set(baseline["ratios"]))]
    return rows


def table(rows: list[Row]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "-".rjust(int(fmt.lstrip("+").split(".")[0])) if v is None else format(v, fmt)

    width = max([len("metric")] + [len(r.metric) for r in rows])
    lines = [f"{'metric':<{width}} {'baseline':>9} {'result':>9} {'change':>8}  status"]
    for r in rows:
        cells = f"{num(r.baseline, '9.3f')} {num(r.result, '9.3f')} {num(r.change, '+8.1%')}"
        lines.append(f"{r.metric:<{width}} {cells}  {r.status}")
    counts = {s: sum(r.status == s for r in rows) for s in (OK, FAIL, MISSING, NEW)}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def failed(rows: list[Row]) -> bool:
    return any(r.status == FAIL for r in rows)
