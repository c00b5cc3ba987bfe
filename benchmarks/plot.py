"""PNG charts of a suite result (matplotlib, Agg backend: no display needed).

    python -m benchmarks plot RESULT.json [--out-dir DIR]

- tok_s.png: prefill and decode tok/s per format, ours against llama.cpp (the ratio
  above each pair);
- matvec_gb_s.png: matvec GB/s per format and matrix shape, with the memory-copy GB/s
  of the same run as a line;
- ratios.png: every ratio of the result (GPU ones included), against 1.

A chart whose numbers the result lacks is not drawn (and plot says so).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

TOK_S = re.compile(r"^cpu\.(prefill|prefill512|decode)\.([^.]+)\.tok_s$")  # benchmarks.cpu.PHASES
MATVEC = re.compile(r"^cpu\.matvec\.([^.]+)\.(\d+x\d+)\.gb_s$")


def _pyplot():  # matplotlib is an optional dependency (the bench and test extras)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(result: dict, what: str, repeat: int | None = None) -> str:
    cpu = result["machine"]["cpu"]
    where = cpu.get("model", cpu.get("arch", "?"))
    return f"{what}\n{where}, {result['threads']} threads, median of {repeat or result['repeat']}"


def tok_s_chart(result: dict, path: Path) -> bool:
    m = result["metrics"]
    phases: dict[str, dict[str, tuple[float, float | None]]] = defaultdict(dict)
    for name, v in m.items():
        if hit := TOK_S.match(name):
            phase, t = hit.groups()
            phases[phase][t] = (v, m.get(f"cpu.{phase}.{t}.llama_cpp.tok_s"))
    if not phases:
        return False
    plt = _pyplot()
    order = [p for p in ("prefill", "prefill512", "decode") if p in phases]
    fig, axes = plt.subplots(1, len(order), figsize=(5 * len(order), 4), squeeze=False)
    for ax, phase in zip(axes[0], order, strict=True):
        types = sorted(phases[phase])
        ours = [phases[phase][t][0] for t in types]
        theirs = [phases[phase][t][1] for t in types]
        xs = range(len(types))
        ax.bar([x - 0.2 for x in xs], ours, 0.4, label="realm-ext")
        if any(v is not None for v in theirs):
            ax.bar([x + 0.2 for x in xs], [v or 0 for v in theirs], 0.4, label="llama.cpp")
            for x, a, b in zip(xs, ours, theirs, strict=True):
                if b:
                    ax.annotate(f"{a / b:.2f}x", (x, max(a, b)), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(xs), types)
        ax.set_ylabel("tok/s")
        ax.set_title(phase)
        ax.margins(y=0.15)  # room for the ratios above the bars
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)  # below: no bar hidden
    fig.suptitle(_title(result, "tinyllama shape, random blocks"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def matvec_chart(result: dict, path: Path) -> bool:
    m = result["metrics"]
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for name, v in m.items():
        if hit := MATVEC.match(name):
            table[hit.group(1)][hit.group(2)] = v
    if not table:
        return False
    plt = _pyplot()
    types = sorted(table)
    shapes = sorted({s for row in table.values() for s in row}, key=lambda s: tuple(map(int, s.split("x"))))
    width = 0.8 / len(shapes)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(types)), 4))
    for i, shape in enumerate(shapes):
        xs = [x - 0.4 + width * (i + 0.5) for x in range(len(types))]
        ax.bar(xs, [table[t].get(shape, 0) for t in types], width, label=shape)
    if "cpu.copy.gb_s" in m:
        ax.axhline(m["cpu.copy.gb_s"], color="k", linestyle="--", label="memory copy")
    ax.set_xticks(range(len(types)), types)
    ax.set_ylabel("GB/s of weights read")
    ax.legend(fontsize=8)
    repeat = result["sections"].get("cpu_kernels", {}).get("repeat")
    ax.set_title(_title(result, "matvec, one token", repeat), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def ratios_chart(result: dict, path: Path) -> bool:
    ratios = sorted(result["ratios"].items())
    if not ratios:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(ratios) + 1.2))
    ax.barh(range(len(ratios)), [v for _, v in ratios])
    ax.axvline(1.0, color="k", linestyle="--")
    ax.set_yticks(range(len(ratios)), [k for k, _ in ratios], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (higher is better; 1 = par)")
    ax.set_title(_title(result, "same-run ratios"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


CHARTS = {"tok_s.png": tok_s_chart, "matvec_gb_s.png": matvec_chart, "ratios.png": ratios_chart}


def plot(result: dict, out_dir: Path) -> list[Path]:
    """Draw every chart the result has numbers for into `out_dir`; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, chart in CHARTS.items():
        if chart(result, out_dir / name):
            written.append(out_dir / name)
        else:
            print(f"{name}: no numbers for it in this result, not drawn")
    return written
