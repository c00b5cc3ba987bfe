"""A suite result as Markdown tables, for the README.

python -m benchmarks table RESULT.json
"""

from __future__ import annotations

import re
from collections import defaultdict

from benchmarks.plot import MATVEC, TOK_S

GUEST = re.compile(r"^guest\.decode\.([^.]+)\.([^.]+)\.vs_direct$")


def _shape_key(s: str) -> tuple[int, ...]:
    return tuple(map(int, s.split("x")))


def machine_line(result: dict) -> str:
    m, cpu = result["machine"], result["machine"]["cpu"]
    name = cpu.get("model", cpu.get("arch", "?"))
    parts = [
        f"{name} ({cpu.get('cores', '?')} cores, {cpu.get('realm_isa', '?')})",
        *([f"GPU {m['gpu']}"] if m.get("gpu") else []),
        f"{result['threads']} threads",
        f"`{result['command']}`",
        f"median of {result['repeat']}",
        str(m["date"])[:10],
    ]
    if m.get("git"):
        parts.append(f"commit {m['git']['commit'][:7]}{' + changes' if m['git']['dirty'] else ''}")
    if m.get("load_average"):
        parts.append(f"load average {m['load_average'][0]:.1f} at the start")
    return ", ".join(parts)


def e2e_table(result: dict) -> list[str]:
    m = result["metrics"]
    types = sorted({hit.group(2) for k in m if (hit := TOK_S.match(k))})
    if not types:
        return []
    lines = [
        "| type | prefill tok/s | llama.cpp | ratio | prefill 512 tok/s | llama.cpp | ratio "
        "| decode tok/s | llama.cpp | ratio | decode default/mmap |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in types:
        cells = []
        for phase in ("prefill", "prefill512", "decode"):
            ours, theirs = m.get(f"cpu.{phase}.{t}.tok_s"), m.get(f"cpu.{phase}.{t}.llama_cpp.tok_s")
            ratio = result["ratios"].get(f"cpu.{phase}.{t}.vs_llama_cpp")
            cells += [_num(ours, ".1f"), _num(theirs, ".1f"), _num(ratio, ".2f")]
        cells.append(_num(m.get(f"cpu.decode.{t}.default_vs_mmap"), ".2f"))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def matvec_table(result: dict) -> list[str]:
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for k, v in result["metrics"].items():
        if hit := MATVEC.match(k):
            table[hit.group(1)][hit.group(2)] = v
    if not table:
        return []
    shapes = sorted({s for row in table.values() for s in row}, key=_shape_key)
    copy = result["metrics"].get("cpu.copy.gb_s")
    lines = [
        f"matvec GB/s of weights read, one token, rows x cols (x memory copy at {_num(copy, '.2f')} GB/s):",
        "",
        "| type | " + " | ".join(shapes) + " |",
        "|---|" + "---|" * len(shapes),
    ]
    for t in sorted(table):
        cells = []
        for s in shapes:
            ratio = result["ratios"].get(f"cpu.matvec.{t}.{s}.vs_copy")
            cells.append(f"{_num(table[t].get(s), '.2f')} ({_num(ratio, '.2f')}x)")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def guest_table(result: dict) -> list[str]:
    m, rows = result["metrics"], []
    for k, v in sorted(result["ratios"].items()):
        if hit := GUEST.match(k):
            preset, engine = hit.groups()
            base = f"guest.decode.{preset}.{engine}"
            rows.append(
                f"| {preset} | {engine} | {_num(m.get(base + '.direct.tok_s'), '.0f')} | "
                f"{_num(m.get(base + '.tok_s'), '.0f')} | {v:.2f} |"
            )
    if not rows:
        return []
    return ["| preset | engine | direct tok/s | guest tok/s | ratio |", "|---|---|---|---|---|", *rows]


def gpu_table(result: dict) -> list[str]:
    rows = [f"| {k} | {v:.3f} |" for k, v in sorted(result["ratios"].items()) if k.startswith("gpu.")]
    return ["| GPU ratio | value |", "|---|---|", *rows] if rows else []


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    blocks = [
        [machine_line(result)],
        e2e_table(result),
        matvec_table(result),
        guest_table(result),
        gpu_table(result),
    ]
    blocks += [[f"skipped {k}: {v}" for k, v in result["skipped"].items()]]
    return "\n\n".join("\n".join(b) for b in blocks if b) + "\n"
