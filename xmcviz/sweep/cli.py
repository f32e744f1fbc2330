"""``xmcviz sweep``: the command-line arguments and exit codes (``xmcviz.cli`` calls in here)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .collect import DEFAULT_METRIC, FAILED, OK, SKIPPED
from .execute import SCHEDULER_ENV, run_sweep
from .grid import SweepError, notebook_parameters, parse_grid_args, parse_param_args


def _memory(text: str) -> str | None:
    return None if text.lower() in ("none", "0") else text


def add_sweep_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``xmcviz sweep`` arguments to ``parser`` (a subcommand parser)."""
    parser.description = ("Run a notebook with papermill over the cross product of --grid values, "
                          "on Dask (local worker processes or an existing cluster); re-running "
                          "the same command skips finished cells.")
    parser.add_argument("notebook", help="notebook with a 'parameters' cell declaring output_dir")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                        help="values of one parameter, comma-separated; a JSON list "
                             "(NAME='[\"a,b\", \"c\"]') for values holding commas. Repeatable.")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="fixed value for every cell (commas kept). Repeatable.")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="sweep folder: DIR/<cell>/, results.csv, summary.html")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="local worker processes, one cell each at a time (one GPU each, "
                             "round-robin, if present); ignored with --scheduler")
    parser.add_argument("--scheduler", default=os.environ.get(SCHEDULER_ENV) or None,
                        metavar="ADDRESS",
                        help=f"a running Dask scheduler, e.g. tcp://host:8786 "
                             f"(default ${SCHEDULER_ENV}; unset: a local cluster of --jobs workers)")
    parser.add_argument("--retries", type=int, default=2, metavar="N",
                        help="runs again of a cell whose worker died while running it (default 2)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="wall-clock seconds allowed per cell")
    parser.add_argument("--metric", default=DEFAULT_METRIC, metavar="NAME",
                        help=f"metric plotted for every run label in summary.html "
                             f"(default {DEFAULT_METRIC})")
    parser.add_argument("--memory-limit", type=_memory, default="auto", metavar="SIZE",
                        help="memory per local worker, e.g. 4GB (default auto: the machine's "
                             "memory shared out; none: unlimited)")
    parser.add_argument("--kernel", dest="kernel_name", default=None, metavar="NAME",
                        help="Jupyter kernel (default: the notebook's)")
    return parser


def run_sweep_cli(args: argparse.Namespace) -> int:
    """Run ``xmcviz sweep``: 0 all succeeded, 1 some failed, 2 bad arguments, 130 interrupted."""
    try:
        declared = notebook_parameters(args.notebook)
        grid = parse_grid_args(args.grid, declared)
        params = parse_param_args(args.param, declared)
        result = run_sweep(args.notebook, grid, params, out=args.out, jobs=args.jobs,
                           kernel_name=args.kernel_name, timeout=args.timeout, progress=True,
                           scheduler=args.scheduler, retries=args.retries, metric=args.metric,
                           memory_limit=args.memory_limit)
    except SweepError as e:
        print(f"xmcviz sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xmcviz sweep: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    counts = {s: sum(r.status == s for r in result.records) for s in (OK, SKIPPED, FAILED)}
    print(f"{len(result.records)} cells: {counts[OK]} ok, {counts[SKIPPED]} skipped "
          f"(finished earlier), {counts[FAILED]} failed")
    print(f"results: {result.files['csv']}  summary: {result.files['summary']}")
    if result.failed:
        print("failed:")
        for r in result.failed:
            print(f"  {r.slug}: {r.error}\n    notebook: {r.notebook}")
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xmcviz.sweep ...``: the same as ``xmcviz sweep ...``."""
    parser = add_sweep_arguments(argparse.ArgumentParser(prog="xmcviz sweep"))
    return run_sweep_cli(parser.parse_args(argv))
