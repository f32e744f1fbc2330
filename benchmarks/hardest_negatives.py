"""The hardest negatives from scratch, linear vs one-hidden-layer network (issue 3).

See docs/background.md, section "Hardest negatives from scratch".

Four runs per seed, all from scratch with R = 100 negatives, Adam (step size 1e-3 by default)
and no label bias:

* ``linear-top``      linear model (E_x = x), the 100 exact hardest negatives (``top``);
* ``mlp-top``         the mlp (dropout 0.2, 128 ReLU units), ``top``: "NN-top";
* ``mlp-top-eta50``   the same with eta+/eta- = 50: "NN-top-re";
* ``mlp-top-uniform`` the mlp with 5 exact hardest + 95 uniform negatives: "NN-top-uniform".

``--data`` takes anything :func:`xmcviz.data.resolve` does: a synthetic preset
(``synthetic:NAME``, no download) or a folder holding a real dataset, downloaded by the user from
the Extreme Classification Repository (http://manikvarma.org/downloads/XC/XMLRepository.html,
bag-of-words text format) or Mulan (https://mulan.sourceforge.net/datasets-mlc.html, sparse ARFF).
The default is the Eurlex-like preset; DATA below stands for the folder where you put the datasets.
Prints one JSON line per run (P@1/P@5 after every epoch and the chance P@5 of the data: the
P@5 of a random ranking) and a final JSON summary with the final P@5 per variant.

    python benchmarks/hardest_negatives.py
    python benchmarks/hardest_negatives.py --data DATA/Delicious --epochs 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.sparse as sp
import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz import data as xdata
from xmcviz.core.trainer import TrainConfig, Trainer

#: name -> TrainConfig settings of the variant.
VARIANTS: dict[str, dict] = {
    "linear-top": dict(model="linear", sampler="top"),
    "mlp-top": dict(model="mlp", sampler="top"),
    "mlp-top-eta50": dict(model="mlp", sampler="top", eta_ratio=50.0),
    "mlp-top-uniform": dict(model="mlp", sampler="top-uniform", mips_k=5),
}


def chance_p5(dataset) -> float:
    """P@5 of a random ranking: the mean number of test positives per row / L."""
    Y = sp.csr_matrix(dataset.Y_test)
    return float(np.diff(Y.indptr).mean() / Y.shape[1])


def run_one(dataset, data: str, name: str, seed: int, args) -> dict:
    kw = dict(VARIANTS[name], negatives=args.negatives, label_bias=False, lr=args.lr,
              batch_size=args.batch_size, epochs=args.epochs, seed=seed, data_seed=seed)
    cfg = TrainConfig(data=data, device="cpu", progress=False, **kw)
    trainer = Trainer(cfg, dataset=dataset)
    t0 = time.perf_counter()
    trainer.train()
    hist = trainer.history
    return {"data": data, "variant": name, **kw, "wall_s": round(time.perf_counter() - t0, 2),
            "chance_P@5": round(chance_p5(dataset), 5),
            "loss": [round(h["loss"], 4) for h in hist],
            "P@1": [round(h["P@1"], 4) for h in hist], "P@5": [round(h["P@5"], 4) for h in hist]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:eurlex-like",
                    help="synthetic:NAME, or a dataset folder (XC text format from the Extreme Classification "
                         "Repository, or Mulan ARFF)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="0", help="comma-separated; seed data and trainer")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--negatives", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = ap.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variant {sorted(unknown)[0]!r}: allowed {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    records = []
    with JsonLines(args.out) as out:
        for seed in [int(s) for s in args.seeds.split(",")]:
            ds = xdata.resolve(args.data, seed=seed)
            for name in args.variants.split(","):
                records.append(out.emit(run_one(ds, args.data, name, seed, args)))
        final = {}
        for name in args.variants.split(","):
            p5 = [r["P@5"][-1] for r in records if r["variant"] == name]
            final[name] = {"final_P@5": p5, "mean": round(statistics.fmean(p5), 4)}
        summary = out.emit({"summary": {"data": args.data, "epochs": args.epochs, "lr": args.lr,
                                        "chance_P@5": records[0]["chance_P@5"],
                                        "variants": final}})
    return summary


if __name__ == "__main__":
    main()
