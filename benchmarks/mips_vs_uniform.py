"""Uniform vs MIPS-s vs MIPS-a on the Eurlex-like synthetic preset (issue 3).

See docs/background.md, section "Pre-processing interval".

Every run: the mlp model (dropout 0.2, 128 hidden units), R = 100 negatives, the trainer's
default Adam step size and batch size; MIPS samplers start with one uniform warm-up epoch and
refresh their index once per epoch (PPE = 1), MIPS-s takes k = 5 of its negatives from MIPS.
Prints one JSON line per run (P@1/P@3/P@5 after every epoch) and a final JSON summary: per
sampler the mean and spread over seeds of P@5 after each epoch, and per seed the gap
MIPS-s - uniform in final P@5.  ``--seed`` s seeds both the synthetic data and the trainer.

    python benchmarks/mips_vs_uniform.py                      # 3 seeds x 3 samplers, 8 epochs
    python benchmarks/mips_vs_uniform.py --seeds 0 --epochs 4 --samplers uniform,mips-s
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz import data as xdata
from xmcviz.core.trainer import TrainConfig, Trainer

SAMPLERS = ("uniform", "mips-s", "mips-a")


def run_one(dataset, data: str, sampler: str, seed: int, args) -> dict:
    """Train one run; return its record (config and per-epoch metrics)."""
    warmup = args.warmup_epochs if sampler.startswith("mips") else 0
    kw = dict(model=args.model, sampler=sampler, negatives=args.negatives, mips_k=args.mips_k,
              warmup_epochs=warmup, epochs=args.epochs, seed=seed, data_seed=seed)
    if args.lr is not None:
        kw["lr"] = args.lr
    if args.batch_size is not None:
        kw["batch_size"] = args.batch_size
    cfg = TrainConfig(data=data, device="cpu", progress=False, **kw)
    trainer = Trainer(cfg, dataset=dataset)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    hist = trainer.history
    return {"data": data, **{k: v for k, v in cfg.to_dict().items() if k in kw or k in
                             ("lr", "batch_size")},
            "wall_s": round(wall, 2),
            "P@1": [round(h["P@1"], 4) for h in hist], "P@3": [round(h["P@3"], 4) for h in hist],
            "P@5": [round(h["P@5"], 4) for h in hist]}


def summarise(records: list[dict]) -> dict:
    """Mean / min / max over seeds of P@5 per epoch, and the per-seed MIPS-s - uniform gap."""
    out: dict = {"by_sampler": {}}
    for s in sorted({r["sampler"] for r in records}):
        runs = [r for r in records if r["sampler"] == s]
        per_epoch = list(zip(*[r["P@5"] for r in runs]))
        out["by_sampler"][s] = {
            "seeds": [r["seed"] for r in runs],
            "P@5_mean": [round(statistics.fmean(e), 4) for e in per_epoch],
            "P@5_min": [round(min(e), 4) for e in per_epoch],
            "P@5_max": [round(max(e), 4) for e in per_epoch],
            "final_P@1": [r["P@1"][-1] for r in runs],
            "final_P@5": [r["P@5"][-1] for r in runs],
        }
    by = {(r["sampler"], r["seed"]): r for r in records}
    gaps = {str(seed): round(by[("mips-s", seed)]["P@5"][-1] - by[("uniform", seed)]["P@5"][-1], 4)
            for (s, seed) in by if s == "mips-s" and ("uniform", seed) in by}
    if gaps:
        out["final_P@5_gap_mips_s_minus_uniform"] = gaps
        u = out["by_sampler"]["uniform"]["final_P@5"]
        out["uniform_seed_spread_P@5"] = round(max(u) - min(u), 4)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:eurlex-like",
                    help="synthetic:NAME, or a dataset folder (XC text format from the Extreme Classification "
                         "Repository, or Mulan ARFF)")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated; seed data and trainer")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--negatives", type=int, default=100)
    ap.add_argument("--mips-k", type=int, default=5)
    ap.add_argument("--lr", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--batch-size", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = []
    with JsonLines(args.out) as out:
        for seed in [int(s) for s in args.seeds.split(",")]:
            ds = xdata.resolve(args.data, seed=seed)
            for sampler in args.samplers.split(","):
                records.append(out.emit(run_one(ds, args.data, sampler, seed, args)))
        summary = out.emit({"summary": summarise(records)})
    return summary


if __name__ == "__main__":
    main()
