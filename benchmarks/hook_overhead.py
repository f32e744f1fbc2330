"""Training time with the default hooks on versus off (issue 4, item 9; target ratio <= 1.10).

Trains the mlp with MIPS-s (one uniform warm-up epoch, so every default hook has work: ranks,
freq, grad and staleness) on the Eurlex-like preset, writing a run directory as ``xmcviz
train`` does, once with ``make_hooks("default")`` and once with no hooks, alternating the two
``--repeats`` times in one process.  The time is the wall-clock of ``Trainer.train()`` (the
trainer's own ``time_s`` leaves hook time out, so it cannot show the overhead); evaluation
and checkpoints are in both.  Prints one JSON line per run, then last a JSON object with the
medians and ``overhead_ratio`` = median(on) / median(off).  Timings on a shared machine are
noisy: the repeats are interleaved and medians taken for that reason.

    python benchmarks/hook_overhead.py                  # 2 epochs, 3 repeats
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz import data as xdata
from xmcviz.hooks import DEFAULT_HOOKS, make_hooks
from xmcviz.core.trainer import TrainConfig, Trainer


def timed_run(dataset, args, hooks_on: bool, run_dir: Path) -> float:
    cfg = TrainConfig(data=args.data, model="mlp", sampler=args.sampler, warmup_epochs=1,
                      epochs=args.epochs, device="cpu", progress=False, out=str(run_dir),
                      overwrite=True)
    trainer = Trainer(cfg, dataset=dataset, hooks=make_hooks("default" if hooks_on else None))
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:eurlex-like")
    ap.add_argument("--sampler", default="mips-s")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = xdata.resolve(args.data, seed=0)
    times: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="hook_overhead-") as tmp, JsonLines() as out:
        timed_run(ds, args, False, Path(tmp) / "warm")  # first run pays one-off costs
        for rep in range(args.repeats):
            order = ("on", "off") if rep % 2 == 0 else ("off", "on")
            for which in order:
                t = timed_run(ds, args, which == "on", Path(tmp) / which)
                times[which].append(t)
                out.emit({"repeat": rep, "hooks": which, "train_wall_s": round(t, 3)})
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    result = {"data": args.data, "sampler": args.sampler, "epochs": args.epochs,
              "hooks": DEFAULT_HOOKS, "repeats": args.repeats,
              "median_on_s": round(on, 3), "median_off_s": round(off, 3),
              "overhead_ratio": round(on / off, 4), "target": 1.10}
    return JsonLines().emit(result)


if __name__ == "__main__":
    main()
