"""`xmcviz sweep` scaling: one 8-cell grid run directly, on Dask with 1 and 2 local workers, and
through a separately started scheduler with 2 workers (targets: ratio to serial <= 0.6 with 2
workers on 2 cores; Dask overhead <= 2 s per cell).

The grid is ``seed=0..7`` of ``notebooks/gradient_dominance.ipynb`` with small parameters
(``--data``, one epoch, one torch thread, CPU). Modes, each timed as wall seconds of the whole
grid, in one process, in this order:

- ``direct``: papermill executes the 8 cells one after the other in this process (the serial
  baseline: no Dask, no sweep bookkeeping);
- ``jobs1`` / ``jobs2``: :func:`xmcviz.sweep.run_sweep` with a local cluster of 1 / 2 workers,
  cluster start-up included;
- ``scheduler2``: ``run_sweep(scheduler=...)`` against ``dask scheduler`` + two ``dask worker``
  processes on 127.0.0.1 started beforehand (their start-up is not counted: a standing cluster).

Per-cell overhead of the Dask path = (``jobs1`` - ``direct``) / cells, cluster start-up
included; ``cell_s_mean`` is papermill's own time per cell (inside the worker for the Dask
modes), so the rest of the wall time is start-up and bookkeeping. On a machine shared with
other jobs the wall-clock ratios move with their load (``load1`` is recorded).

    python benchmarks/sweep_scaling.py                        # synthetic:tiny
    python benchmarks/sweep_scaling.py --data DIR --out benchmarks/results/sweep_scaling.jsonl
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "gradient_dominance.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workers: int, logs: Path) -> tuple[str, list[subprocess.Popen]]:
    """A scheduler and ``workers`` single-threaded workers on loopback, ready."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
           "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
    cmds = [[sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(port), "--no-dashboard"]]
    cmds += [[sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
              "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"] for i in range(workers)]
    procs = []
    for i, cmd in enumerate(cmds):
        with open(logs / f"dask{i}.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))
    with Client(address, timeout=120) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="synthetic:tiny",
                    help="the notebook's data: a preset or a dataset folder (e.g. Delicious)")
    ap.add_argument("--cells", type=int, default=8, help="grid size (seeds 0..cells-1)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--modes", default="direct,jobs1,jobs2,scheduler2")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file too")
    args = ap.parse_args()

    import papermill as pm
    from tqdm import tqdm

    from xmcviz.sweep import run_sweep

    fixed = {"data": args.data, "epochs": args.epochs, "threads": 1, "device": "cpu",
             "eval_every_steps": 1000, "grad_every": 8}
    grid = {"seed": list(range(args.cells))}
    modes = args.modes.split(",")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp, JsonLines(args.out, "a") as out:
        tmp = Path(tmp)

        cell_s: dict[str, float] = {}

        def direct() -> None:
            for seed in tqdm(grid["seed"], desc="direct", unit="cell"):
                start = time.perf_counter()
                pm.execute_notebook(str(NOTEBOOK), str(tmp / f"direct-{seed}.ipynb"),
                                    parameters={**fixed, "seed": seed,
                                                "output_dir": str(tmp / f"direct-{seed}")},
                                    progress_bar=False, cwd=str(NOTEBOOK.parent))
                cell_s["direct"] = cell_s.get("direct", 0.0) + (time.perf_counter() - start) / args.cells

        def sweep(name: str, **kw) -> None:
            res = run_sweep(NOTEBOOK, grid, fixed, out=tmp / name, progress=True, **kw)
            failed = [(r.slug, r.error) for r in res.failed]
            if failed:
                raise SystemExit(f"{name}: cells failed: {failed}")
            # papermill's time inside the worker, per cell (kernel start included, as in direct)
            cell_s[name] = sum(r.duration_s for r in res.records) / len(res.records)

        for mode in modes:
            procs: list[subprocess.Popen] = []
            try:
                if mode == "direct":
                    fn = direct
                elif mode.startswith("jobs"):
                    fn = lambda m=mode: sweep(m, jobs=int(m[4:]), devices=[])  # noqa: E731
                elif mode == "scheduler2":
                    address, procs = start_cluster(2, tmp)
                    fn = lambda a=address: sweep("scheduler2", scheduler=a)  # noqa: E731
                else:
                    raise SystemExit(f"unknown mode {mode!r}")
                wall, cpu = timed(fn)
            finally:
                stop(procs)
            results[mode] = wall
            base = results.get("direct")
            out.emit({"bench": "sweep_scaling", "mode": mode, "cells": args.cells,
                      "data": args.data, "epochs": args.epochs, "wall_s": round(wall, 2),
                      "client_cpu_s": round(cpu, 2), "cpus": os.cpu_count(),
                      "load1": round(os.getloadavg()[0], 1),
                      "ratio_to_direct": round(wall / base, 3) if base else None,
                      "cell_s_mean": round(cell_s.get(mode, float("nan")), 2),
                      "overhead_per_cell_s": round((wall - base) / args.cells, 2)
                      if base and mode == "jobs1" else None})


if __name__ == "__main__":
    main()
