"""Rank drift of MIPS negatives within a refresh interval (issue 4).

See docs/background.md, section "Rank drift".

Trains the mlp on the Eurlex-like preset with uniform, MIPS-s and MIPS-a negatives (R = 100;
MIPS: one uniform warm-up epoch, then one index refresh per epoch, MIPS-s with k = 5) and the
NegativeRanks hook, which logs, every ``--every`` steps (default: every step) for 50 probe
rows, the true rank (1 = highest score among all L labels, under the current model) of every
negative in the loss.
For each run it reports the median true rank at the first, middle and last logged step of
each refresh interval after the warm-up (``xmcviz.notebook.analysis.rank_medians_by_phase`` on the run
directory read back with ``xmcviz.core.run_reader.load_run``), overall and by source (``mips`` /
``uniform``).  Uniform never refreshes: its phases are taken within each epoch (the same
steps as the MIPS intervals).  A uniform draw has median rank about L / 2.
Prints one JSON line per run and a final JSON summary.

    python benchmarks/rank_drift.py                    # 3 epochs (1 warm-up + 2 intervals)
    python benchmarks/rank_drift.py --epochs 4 --seeds 0,1
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz import data as xdata
from xmcviz.notebook.analysis import PHASES, rank_medians_by_phase
from xmcviz.hooks import NegativeRanks
from xmcviz.core.run_reader import load_run
from xmcviz.core.trainer import TrainConfig, Trainer

SAMPLERS = ("uniform", "mips-s", "mips-a")


def phase_medians(ranks, steps_per_epoch: int, since_step: int) -> dict:
    """Median rank per phase (first/middle/last) of the refresh intervals, per source."""
    if (ranks["steps_since_refresh"] < 0).all():  # never refreshes: one interval per epoch
        ranks = ranks.assign(steps_since_refresh=ranks["step"] % steps_per_epoch,
                             refresh_interval=steps_per_epoch)
    return rank_medians_by_phase(ranks, since_step=since_step)


def per_interval(ranks, since_step: int) -> list[dict]:
    """Median rank at the first and last logged step of each interval (epoch) after warm-up."""
    r = ranks[ranks["step"] >= since_step]
    out = []
    for epoch, g in r.groupby("epoch"):
        steps = sorted(g["step"].unique())
        out.append({"epoch": int(epoch),
                    "first_step": int(steps[0]), "first": float(g[g["step"] == steps[0]]["rank"].median()),
                    "last_step": int(steps[-1]), "last": float(g[g["step"] == steps[-1]]["rank"].median())})
    return out


def run_one(dataset, data: str, sampler: str, seed: int, out_dir: Path, args) -> dict:
    warmup = args.warmup_epochs if sampler.startswith("mips") else 0
    kw = dict(model="mlp", sampler=sampler, negatives=args.negatives, mips_k=args.mips_k,
              warmup_epochs=warmup, refreshes_per_epoch=1 if sampler.startswith("mips") else None,
              epochs=args.epochs, seed=seed, data_seed=seed)
    if args.lr is not None:
        kw["lr"] = args.lr
    run_dir = out_dir / f"{sampler}-seed{seed}"
    cfg = TrainConfig(data=data, device="cpu", progress=False, out=str(run_dir), overwrite=True, **kw)
    trainer = Trainer(cfg, dataset=dataset, hooks=[NegativeRanks(every=args.every)])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    spe = trainer.steps_per_epoch
    since = args.warmup_epochs * spe  # compare all samplers over the same (post-warm-up) steps
    ranks = load_run(run_dir).hooks["ranks"]
    return {"data": data, "sampler": sampler, "seed": seed, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "epochs": args.epochs, "warmup_epochs": warmup, "steps_per_epoch": spe,
            "num_labels": trainer.num_labels, "wall_s": round(wall, 2),
            "P@5": [round(h["P@5"], 4) for h in trainer.history],
            "median_rank_by_phase": phase_medians(ranks, spe, since),
            "median_rank_by_interval": per_interval(ranks, since)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:eurlex-like",
                    help="synthetic:NAME, or a dataset folder (XC text format from the Extreme Classification "
                         "Repository, or Mulan ARFF)")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--negatives", type=int, default=100)
    ap.add_argument("--mips-k", type=int, default=5)
    ap.add_argument("--lr", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--every", type=int, default=1, help="NegativeRanks interval (steps); 1 "
                    "logs the refresh step itself as the first step of each interval")
    ap.add_argument("--runs-dir", default=None, help="keep the run directories here "
                    "(default: a temporary folder, removed at the end)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = None if args.runs_dir else tempfile.TemporaryDirectory(prefix="rank_drift-")
    out_dir = Path(args.runs_dir or tmp.name)
    records = []
    try:
        with JsonLines(args.out) as out:
            for seed in [int(s) for s in args.seeds.split(",")]:
                ds = xdata.resolve(args.data, seed=seed)
                for sampler in args.samplers.split(","):
                    records.append(out.emit(run_one(ds, args.data, sampler, seed, out_dir, args)))
            summary = out.emit({"summary": {
                "num_labels": records[0]["num_labels"],
                "median_rank_first_middle_last": {
                    f"{r['sampler']}-seed{r['seed']}": [
                        r["median_rank_by_phase"].get(ph, {}).get("all")
                        for ph in PHASES]
                    for r in records}}})
    finally:
        if tmp is not None:
            tmp.cleanup()
    return summary


if __name__ == "__main__":
    main()
