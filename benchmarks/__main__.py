"""The regression suite's command line.

    python -m benchmarks run --suite quick|full [--out RESULT.json] [--repeat N]
    python -m benchmarks compare RESULT.json [--baseline benchmarks/baseline.json] [--tolerance 0.10]
    python -m benchmarks plot RESULT.json [--out-dir DIR]
    python -m benchmarks table RESULT.json
    python -m benchmarks baseline RESULT.json [--out benchmarks/baseline.json]
    python -m benchmarks spread RESULT.json RESULT.json ...

run: benchmarks.suite; compare: benchmarks.compare; plot: benchmarks.plot; table:
Markdown tables of a result (benchmarks.report, for the README); baseline: write a
result's ratios as the new baseline; spread: max/min - 1 of each ratio over
several results of the same suite (how stable a repeat count is).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from benchmarks import compare, result


def _write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks import suite  # imports the kernels: only for this command

    command = "python -m benchmarks " + shlex.join(args.argv)
    res = suite.run_suite(
        args.suite, args.repeat, args.threads, args.models_dir, None, args.sections, command
    )
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("benchmarks/results") / f"{args.suite}-{stamp}.json"
    print(suite.summary(res))
    _write_json(res, out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    res, base = result.load_result(args.result), result.load_baseline(args.baseline)
    meta = base["meta"]
    print(f"baseline: {meta.get('command')} ({meta.get('cpu')}, {meta.get('date')})")
    print(f"result:   {res['command']} ({res['machine']['cpu'].get('model')}, {res['machine']['date']})")
    rows = compare.compare(res, base, args.tolerance)
    print(compare.table(rows))
    if compare.failed(rows):
        print(f"FAILED: a ratio fell more than {args.tolerance:.0%} below its baseline")
        return 1
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from benchmarks import plot

    for path in plot.plot(result.load_result(args.result), args.out_dir):
        print(f"wrote {path}")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from benchmarks import report

    print(report.markdown(result.load_result(args.result)), end="")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    _write_json(result.make_baseline(result.load_result(args.result), args.note), args.out)
    return 0


def cmd_spread(args: argparse.Namespace) -> int:
    from benchmarks.suite import spread

    runs = [result.load_result(p) for p in args.results]
    print(f"{'ratio':<48} " + " ".join(f"{'run ' + str(i + 1):>7}" for i in range(len(runs))) + "  spread")
    for name, s in spread(runs).items():
        print(f"{name:<48} " + " ".join(f"{r['ratios'][name]:7.3f}" for r in runs) + f"  {s:6.1%}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the suite, write one JSON result")
    p.add_argument("--suite", choices=result.SUITES, default="quick")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/SUITE-DATE.json")
    p.add_argument("--repeat", type=int, help="runs per figure, median (default: the suite's)")
    p.add_argument("--threads", type=int, default=2, help="threads of ours and of llama.cpp (default 2)")
    p.add_argument("--models-dir", type=Path, help="where the tinyllama models are cached")
    p.add_argument(
        "--sections", nargs="+", choices=["cpu_kernels", "cpu_e2e", "guest", "gpu"], help="default all"
    )
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("compare", help="a result's ratios against the baseline; exit 1 on a regression")
    p.add_argument("result", type=Path)
    p.add_argument("--baseline", type=Path, default=compare.DEFAULT_BASELINE)
    p.add_argument("--tolerance", type=float, default=compare.DEFAULT_TOLERANCE)
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("plot", help="PNG charts of a result")
    p.add_argument("result", type=Path)
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/plots"))
    p.set_defaults(fn=cmd_plot)
    p = sub.add_parser("table", help="Markdown tables of a result")
    p.add_argument("result", type=Path)
    p.set_defaults(fn=cmd_table)
    p = sub.add_parser("baseline", help="write a result's ratios as a baseline")
    p.add_argument("result", type=Path)
    p.add_argument("--out", type=Path, default=compare.DEFAULT_BASELINE)
    p.add_argument("--note", help="a remark kept in the baseline's meta (how the machine was, ...)")
    p.set_defaults(fn=cmd_baseline)
    p = sub.add_parser("spread", help="spread of each ratio over several results")
    p.add_argument("results", type=Path, nargs="+")
    p.set_defaults(fn=cmd_spread)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        return args.fn(args)
    except result.SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
