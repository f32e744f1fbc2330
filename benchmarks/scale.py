"""End to end at a published benchmark's shape: load, index, steps with hooks, evaluation.

On a synthetic XC file with the shape of ``--like`` (written by
``xmcviz.data.make_large.write_xc_like`` into ``--work``, or reused when it is there), one
process:

1. ``load-first``: ``xmcviz.data.load`` parsing the pair and writing its ``.npz`` cache;
   ``load-cached``: the same call again, served by the cache;
2. builds a :class:`~xmcviz.core.trainer.Trainer` (``--model``, ``--sampler``, ``--hooks``,
   a run directory in ``--work``) and takes ``--steps`` training steps; the first step
   includes the index build, which is also reported on its own (the sampler's refresh time).
   Steps past an epoch's end include that epoch's evaluation (on ``--eval-rows`` rows) and
   checkpoint: the median step time leaves them out;
3. evaluates on a seeded subsample of ``--eval-rows`` test rows (``Trainer.evaluate(rows=)``).

Each phase prints one JSON line with its seconds (wall-clock, and process CPU time, which a
shared machine disturbs less) and the process's peak RSS so far; the
steps line adds seconds per step (median, after the first) and the bytes the hooks wrote
(everything in the run directory but config, metrics and checkpoint) per step.

    python benchmarks/scale.py --like amazon-670k --work DIR [--rows N] [--steps 200]
        [--sampler mips-s] [--hooks default] [--eval-rows 2000] [--out FILE.jsonl]
"""
from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jsonl import JsonLines  # noqa: E402

_NOT_HOOK_FILES = {"config.json", "metrics.jsonl", "checkpoint.pt"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _Stop(Exception):
    """Raised by :class:`StepProbe` to end training after the requested steps."""


def _probe_class():
    from xmcviz.hooks.base import Hook

    class StepProbe(Hook):
        """Last hook: stamps the end of every step, keeps refresh infos, stops after ``steps``."""

        name = "step-probe"

        def __init__(self, steps: int):
            super().__init__(every=1)
            self.steps, self.stamps, self.refreshes = steps, [], []

        def on_train_start(self, run) -> None:
            self.stamps.append(time.perf_counter())

        def on_refresh(self, info: dict) -> None:
            self.refreshes.append(info)

        def after_update(self, ctx) -> None:
            self.stamps.append(time.perf_counter())
            if len(self.stamps) > self.steps:
                raise _Stop()

    return StepProbe


def _files_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*")
               if p.is_file() and p.name not in _NOT_HOOK_FILES)


def ensure_files(like: str, rows: int | None, work: Path, seed: int) -> tuple[dict, float | None]:
    """The generated pair in ``work`` (written unless already there with the right headers)."""
    from xmcviz.data.make_large import like_shape
    from xmcviz.data.xc_format import read_xc_header
    shape = like_shape(like, rows)
    want = {"train.txt": (shape["train_rows"], shape["features"], shape["labels"]),
            "test.txt": (shape["test_rows"], shape["features"], shape["labels"])}
    try:
        if all(read_xc_header(work / name) == h for name, h in want.items()):
            return shape, None
    except (OSError, ValueError):
        pass
    # In a child process: this one's peak RSS is then the load's and the training's.
    cmd = [sys.executable, "-m", "xmcviz", "data", "make-synthetic", str(work), "--like", like,
           "--seed", str(seed)] + ([] if rows is None else ["--rows", str(rows)])
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return shape, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--like", default="amazon-670k", help="benchmark shape (registry name)")
    ap.add_argument("--rows", type=int, default=None, help="cap on the training rows")
    ap.add_argument("--work", type=Path, required=True,
                    help="folder for the generated files, the cache and the run directory")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--sampler", default="mips-s")
    ap.add_argument("--hooks", default="default")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-rows", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = ap.parse_args(argv)

    import torch

    import xmcviz.data as data
    from xmcviz.core.config import TrainConfig
    from xmcviz.core.trainer import Trainer
    from xmcviz.hooks import make_hooks
    from xmcviz.validation import check_int
    check_int("steps", args.steps, 2)
    check_int("eval_rows", args.eval_rows, 1)
    if args.threads:
        torch.set_num_threads(check_int("threads", args.threads, 1))
    files = args.work / "files"
    common = {"benchmark": "scale", "like": args.like, "rows": args.rows}
    with JsonLines(args.out, "a") as out:
        shape, gen_s = ensure_files(args.like, args.rows, files, args.seed)
        out.emit({**common, "phase": "generate", "seconds": gen_s, "reused": gen_s is None,
                  "bytes": sum((files / n).stat().st_size for n in ("train.txt", "test.txt")),
                  "shape": shape, "peak_rss_mb": peak_rss_mb()})

        cache_dir = args.work / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
        for phase in ("load-first", "load-cached"):
            t, c = time.perf_counter(), time.process_time()
            ds = data.load(files, cache_dir=cache_dir, name=f"{shape['name']}-like")
            secs, cpu = time.perf_counter() - t, time.process_time() - c
            out.emit({**common, "phase": phase, "seconds": secs, "cpu_seconds": cpu,
                      "peak_rss_mb": peak_rss_mb(),
                      "train_nnz": int(ds.X_train.nnz), "labels": int(ds.num_labels)})

        run_dir = args.work / "run"
        # Enough epochs for the steps (small shapes); the probe stops training after them.
        epochs = -(-args.steps // -(-ds.X_train.shape[0] // args.batch_size))
        config = TrainConfig(model=args.model, sampler=args.sampler, batch_size=args.batch_size,
                             epochs=epochs, seed=args.seed, eval_rows=args.eval_rows,
                             out=str(run_dir), overwrite=True, progress=False, device="cpu")
        probe = _probe_class()(args.steps)
        t, c = time.perf_counter(), time.process_time()
        trainer = Trainer(config, dataset=ds, hooks=make_hooks(args.hooks) + [probe])
        build_s = time.perf_counter() - t
        c = time.process_time()
        try:
            trainer.train()
        except _Stop:
            pass
        train_cpu = time.process_time() - c
        d = [b - a for a, b in zip(probe.stamps[1:], probe.stamps[2:])]
        steps = len(probe.stamps) - 1
        hook_bytes = _files_bytes(run_dir)
        refresh = probe.refreshes[0] if probe.refreshes else {}
        out.emit({**common, "phase": "steps", "sampler": args.sampler, "model": args.model,
                  "hooks": args.hooks, "batch_size": args.batch_size, "steps": steps,
                  "steps_per_epoch": trainer.steps_per_epoch,
                  "trainer_build_s": build_s,
                  "first_step_s": probe.stamps[1] - probe.stamps[0],
                  "index_build_s": refresh.get("seconds"),
                  "refreshes": len(probe.refreshes),
                  "step_s_median": statistics.median(d), "step_s_mean": statistics.fmean(d),
                  "train_wall_s": probe.stamps[-1] - probe.stamps[0], "train_cpu_s": train_cpu,
                  "hook_bytes": hook_bytes, "hook_bytes_per_step": hook_bytes / steps,
                  "hook_files": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                                       if p.is_file() and p.name not in _NOT_HOOK_FILES),
                  "torch_threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()})

        t, c = time.perf_counter(), time.process_time()
        metrics = trainer.evaluate(rows=args.eval_rows)
        out.emit({**common, "phase": "evaluate", "eval_rows": args.eval_rows,
                  "seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                  "P@1": metrics.get("P@1"),
                  "peak_rss_mb": peak_rss_mb()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
