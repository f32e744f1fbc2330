"""An accuracy anchor from outside: napkinXC's OVR and PLT beside xmcviz's samplers (JSON lines).

    python benchmarks/baselines.py --data DATA/Delicious --epochs 10
    python benchmarks/baselines.py --data DATA/Bibtex,synthetic:eurlex-like --methods ovr,plt,full,uniform

``--data`` takes a comma-separated list of anything :func:`xmcviz.data.resolve` does: a synthetic
preset (``synthetic:NAME``) or a folder holding a real dataset, downloaded by the user from the
Extreme Classification Repository (http://manikvarma.org/downloads/XC/XMLRepository.html,
bag-of-words text format) or Mulan (https://mulan.sourceforge.net/datasets-mlc.html, sparse ARFF).
DATA stands for the folder where you put the datasets.

Methods: ``ovr`` and ``plt`` are napkinXC's one-vs-rest and probabilistic label tree with their
default settings (liblinear, log loss); every other name is a multi-label
:class:`~xmcviz.core.trainer.TrainConfig` sampler (``full``, ``uniform``, ``mips-a``, ``mips-s``,
``top-uniform``, ``adversarial``...) trained with the trainer's defaults (mlp model, R = 100
negatives, Adam) for ``--epochs`` epochs.  All methods are scored by the same
:func:`xmcviz.core.evaluate.evaluate` on the whole test set, with the same propensities.  One JSON
line per run (P@1/3/5, PSP@1/3/5; ``train_s``: napkinXC's fit, xmcviz's training steps (its
``time_s``); ``wall_s``: everything, with xmcviz's evaluations and the adversarial tree's fit),
appended to ``--out`` when given (a rerun with ``--resume`` skips the runs already there), then
a markdown table of all runs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz import data as xdata
from xmcviz.core.evaluate import evaluate
from xmcviz.core.trainer import TrainConfig, Trainer

NAPKIN = ("ovr", "plt")
DEFAULT_METHODS = "ovr,plt,full,uniform,mips-a,mips-s,top-uniform,adversarial"
KEYS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5")


def napkin_run(method: str, ds, inv_prop: np.ndarray, threads: int, seed: int) -> dict:
    """Fit napkinXC's ``ovr`` or ``plt`` on the training set, score its top 5 on the test set."""
    from napkinxc.models import OVR, PLT
    import tempfile
    X = sp.csr_matrix(ds.X_train, dtype=np.float32)
    Y = sp.csr_matrix(ds.Y_train, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:  # napkinXC keeps its model in a folder
        model = (OVR(tmp, threads=threads) if method == "ovr"
                 else PLT(tmp, threads=threads, seed=seed))
        t0 = time.perf_counter()
        model.fit(X, Y)
        train_s = time.perf_counter() - t0
        pred = model.predict(sp.csr_matrix(ds.X_test, dtype=np.float32), top_k=5)
    ids = np.full((ds.X_test.shape[0], 5), -1, dtype=np.int64)  # -1: no prediction
    for i, row in enumerate(pred):  # napkinXC returns a list per row
        ids[i, :len(row)] = row[:5]
    return {"train_s": train_s, **evaluate(ids, ds.Y_test, inv_propensity=inv_prop)}


def xmcviz_run(sampler: str, ds, epochs: int, seed: int, negatives: int | None = None) -> dict:
    """Train xmcviz's multi-label trainer with ``sampler`` and its defaults; the final record."""
    kw = {} if negatives is None else {"negatives": negatives}
    tr = Trainer(TrainConfig(sampler=sampler, epochs=epochs, seed=seed, device="cpu",
                             progress=False, **kw), dataset=ds)
    last = tr.train()
    return {"train_s": last["time_s"], **{k: last[k] for k in KEYS}}


def markdown(records: list[dict]) -> str:
    """The records as a markdown table, one row per (data, method)."""
    head = "| data | method | " + " | ".join(KEYS) + " | train s |"
    lines = [head, "|" + "---|" * (len(KEYS) + 3)]
    for r in records:
        lines.append(f"| {r['data']} | {r['method']} | "
                     + " | ".join(f"{r[k]:.3f}" for k in KEYS) + f" | {r['train_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:eurlex-like",
                    help="comma-separated: synthetic:NAME or dataset folders (XC text format or Mulan ARFF)")
    ap.add_argument("--methods", default=DEFAULT_METHODS,
                    help="comma-separated: ovr, plt (napkinXC) or xmcviz samplers")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of the xmcviz runs")
    ap.add_argument("--negatives", type=int, default=None, help="R of the xmcviz runs (default: the trainer's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch and napkinXC threads")
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    ap.add_argument("--resume", action="store_true", help="skip the runs already in --out")
    a = ap.parse_args(argv)
    if a.epochs < 1 or a.threads < 1:
        ap.error(f"--epochs={a.epochs}, --threads={a.threads}: both must be >= 1")
    torch.set_num_threads(a.threads)
    done: list[dict] = []
    if a.resume and a.out and Path(a.out).exists():
        done = [json.loads(line) for line in Path(a.out).read_text().splitlines() if line.strip()]
    records = list(done)
    with JsonLines(a.out, mode="a" if a.resume else "w") as out:
        for name in a.data.split(","):
            ds = xdata.resolve(name, seed=a.seed)
            label = name if name.startswith("synthetic:") else Path(name).name  # no local paths
            # The propensities of xmcviz's trainer (dataset's A, B), for every method alike.
            inv_prop = Trainer(TrainConfig(sampler="full", device="cpu", progress=False),
                               dataset=ds).inv_propensity
            for method in a.methods.split(","):
                if any(r["data"] == label and r["method"] == method for r in done):
                    continue
                t0 = time.perf_counter()
                res = (napkin_run(method, ds, inv_prop, a.threads, a.seed) if method in NAPKIN
                       else xmcviz_run(method, ds, a.epochs, a.seed, a.negatives))
                rec = {"data": label, "method": method, "epochs": None if method in NAPKIN else a.epochs,
                       **{k: round(float(res[k]), 4) for k in KEYS},
                       "train_s": round(res["train_s"], 2), "wall_s": round(time.perf_counter() - t0, 2)}
                records.append(out.emit(rec))
    print(markdown(records))
    return records


if __name__ == "__main__":
    main()
