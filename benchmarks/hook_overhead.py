"""Training time with the default hooks on versus off, and the bytes they write (target ratio <= 1.10).

Trains the mlp with MIPS-s (one uniform warm-up epoch, so every default hook has work: ranks,
freq, grad and staleness), writing a run directory as ``xmcviz train`` does, once with
``make_hooks("default")`` and once with no hooks, alternating the two ``--repeats`` times in one
process (on/off, then off/on, ...).  The time of a run is the wall-clock of ``Trainer.train()``
minus its evaluations (the trainer's own ``time_s`` leaves hook time out, so it cannot show the
overhead; evaluations are the same with and without hooks and only add noise); checkpoints are
in both.  The process's CPU time is measured the same way (``*_cpu``): on a machine shared with
other jobs, wall-clock time also counts the time this process waited for a core, CPU time
does not, so the CPU ratios are the stable ones there.  Each adjacent on/off pair gives one ratio; the result reports the median of the
pair ratios, their spread (min, max, and the half-width of their interquartile range) and
the ratio of the medians.  Hook files are measured after each hooks-on run: bytes per step,
per hook file and in all.

``--data`` takes a data spec (``synthetic:eurlex-like``, a directory, ...) or ``like:NAME``: a
synthetic dataset (in memory) with the feature and label counts and labels per row of the
registered benchmark NAME (e.g. ``like:amazon-670k``) and ``--rows`` training rows, so the
per-step cost and the hook files are those of that label count.

    python benchmarks/hook_overhead.py                                   # Eurlex-like, 4K labels
    python benchmarks/hook_overhead.py --data like:amazon-670k --rows 20000 --epochs 3 --repeats 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz import data as xdata
from xmcviz.hooks import DEFAULT_HOOKS, make_hooks
from xmcviz.core.trainer import TrainConfig, Trainer


def load_data(spec: str, rows: int, seed: int = 0):
    """A data spec, or ``like:NAME``: synthetic rows at the shape of benchmark NAME."""
    if not spec.startswith("like:"):
        return xdata.resolve(spec, seed=seed)
    from xmcviz.data.make_large import like_shape
    from xmcviz.data.synthetic import generate
    s = like_shape(spec[len("like:"):], rows=rows)
    L = int(s["labels"])
    return generate({"n_train": s["train_rows"], "n_test": s["test_rows"],
                     "num_features": int(s["features"]), "num_labels": L,
                     "num_clusters": max(1, L // 30), "mean_labels": float(s["labels_per_row"]),
                     "words_per_row": int(round(s["features_per_row"])), "zipf_exponent": 0.7},
                    seed=seed)


def timed_run(dataset, args, hooks_on: bool, run_dir: Path) -> dict:
    cfg = TrainConfig(data=None, model="mlp", sampler=args.sampler, negatives=args.negatives,
                      warmup_epochs=1,
                      epochs=args.epochs, device=args.device, progress=False, out=str(run_dir),
                      overwrite=True, eval_rows=args.eval_rows)
    hooks = make_hooks("default" if hooks_on else None)
    hook_cpu = {h.name: profile_hook(h) for h in hooks}
    trainer = Trainer(cfg, dataset=dataset, hooks=hooks)
    eval_cpu = [0.0]
    evaluate = trainer.evaluate

    def timed_evaluate(*a, **kw):  # the evaluations' CPU time, to leave it out as their wall time
        c0 = time.process_time()
        try:
            return evaluate(*a, **kw)
        finally:
            eval_cpu[0] += time.process_time() - c0

    trainer.evaluate = timed_evaluate
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    eval_s = sum(r.get("eval_s", 0.0) for r in trainer.history)
    out = {"wall_s": wall, "eval_s": eval_s, "train_s": wall - eval_s,
           "train_cpu_s": cpu - eval_cpu[0], "steps": trainer.step}
    if hooks_on:
        out["hook_cpu_s"] = {name: round(acc[0], 3) for name, acc in hook_cpu.items()}
        files = {p.name: p.stat().st_size for p in sorted((run_dir / "hooks").glob("*"))
                 if p.is_file() and not p.name.endswith(".bin.json")}
        out["hook_bytes"] = files
    return out


MOMENTS = ("on_train_start", "before_update", "after_update", "on_refresh", "on_eval", "close")


def profile_hook(hook) -> list[float]:
    """Wrap ``hook``'s moments to add up their CPU time in the returned one-element list."""
    acc = [0.0]
    for moment in MOMENTS:
        fn = getattr(hook, moment)

        def timed(*a, _fn=fn, **kw):
            c0 = time.process_time()
            try:
                return _fn(*a, **kw)
            finally:
                acc[0] += time.process_time() - c0
        setattr(hook, moment, timed)
    return acc


def spread(ratios: list[float]) -> dict:
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"pair_ratio_median": round(statistics.median(ratios), 4),
            "pair_ratio_min": round(min(ratios), 4), "pair_ratio_max": round(max(ratios), 4),
            "pair_ratio_iqr_half": round(float(q3 - q1) / 2, 4)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:eurlex-like",
                    help="data spec, or like:NAME (synthetic at benchmark NAME's shape)")
    ap.add_argument("--rows", type=int, default=20000, help="training rows for like:NAME")
    ap.add_argument("--sampler", default="mips-s")
    ap.add_argument("--negatives", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6, help="on/off pairs, interleaved")
    ap.add_argument("--eval-rows", type=int, default=None,
                    help="test rows for the evaluations during training (default: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--no-warm-run", action="store_true",
                    help="skip the untimed first run (saves a run at large L)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = load_data(args.data, args.rows)
    times: dict[str, list[float]] = {"on": [], "off": []}
    cpu_times: dict[str, list[float]] = {"on": [], "off": []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    hook_bytes: dict[str, int] = {}
    hook_cpu: dict[str, list[float]] = {}
    steps = 0
    with tempfile.TemporaryDirectory(prefix="hook_overhead-") as tmp, \
            JsonLines(args.out, mode="a") as out:
        if not args.no_warm_run:
            timed_run(ds, args, False, Path(tmp) / "warm")  # the first run pays one-off costs
        for rep in range(args.repeats):
            order = ("on", "off") if rep % 2 == 0 else ("off", "on")
            pair, cpu_pair = {}, {}
            for which in order:
                r = timed_run(ds, args, which == "on", Path(tmp) / which)
                times[which].append(r["train_s"])
                cpu_times[which].append(r["train_cpu_s"])
                pair[which], cpu_pair[which] = r["train_s"], r["train_cpu_s"]
                steps = r["steps"]
                hook_bytes = r.get("hook_bytes", hook_bytes)
                for name, sec in r.get("hook_cpu_s", {}).items():
                    hook_cpu.setdefault(name, []).append(sec)
                out.emit({"repeat": rep, "hooks": which, "train_s": round(r["train_s"], 3),
                          **({"hook_cpu_s": r["hook_cpu_s"]} if "hook_cpu_s" in r else {}),
                          "train_cpu_s": round(r["train_cpu_s"], 3),
                          "eval_s": round(r["eval_s"], 3), "wall_s": round(r["wall_s"], 3)})
            ratios.append(pair["on"] / pair["off"])
            cpu_ratios.append(cpu_pair["on"] / cpu_pair["off"])
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        con, coff = statistics.median(cpu_times["on"]), statistics.median(cpu_times["off"])
        total = sum(hook_bytes.values())
        result = {"data": args.data, "num_labels": int(ds.num_labels),
                  "train_rows": int(ds.X_train.shape[0]), "sampler": args.sampler,
                  "epochs": args.epochs, "steps": steps, "hooks": DEFAULT_HOOKS,
                  "repeats": args.repeats, "median_on_s": round(on, 3),
                  "median_off_s": round(off, 3), "overhead_ratio": round(on / off, 4),
                  **spread(ratios),
                  "median_on_cpu_s": round(con, 3), "median_off_cpu_s": round(coff, 3),
                  "overhead_ratio_cpu": round(con / coff, 4),
                  **{f"cpu_{k}": v for k, v in spread(cpu_ratios).items()}, "target": 1.10,
                  "hook_cpu_ms_per_step": {k: round(1000 * statistics.median(v) / max(steps, 1), 2)
                                           for k, v in hook_cpu.items()},
                  "hook_bytes_per_step": round(total / max(steps, 1), 1),
                  "hook_bytes_per_step_by_file": {k: round(v / max(steps, 1), 1)
                                                  for k, v in hook_bytes.items()}}
        return out.emit(result)


if __name__ == "__main__":
    main()
