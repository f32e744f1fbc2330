"""Adversarial vs full / uniform / frequency / NCE in the first-label softmax setting (prints JSON).

    python benchmarks/adversarial_vs_uniform.py --data synthetic:eurlex-like --epochs 4
    python benchmarks/adversarial_vs_uniform.py --data DATA/Delicious --epochs 4

``--data`` takes anything :func:`xmcviz.data.resolve` does: a synthetic preset
(``synthetic:NAME``, no download) or a folder holding a real dataset, downloaded by the user from
the Extreme Classification Repository (http://manikvarma.org/downloads/XC/XMLRepository.html,
bag-of-words text format) or Mulan (https://mulan.sourceforge.net/datasets-mlc.html, sparse ARFF).
DATA below stands for the folder where you put the datasets.

For each method (``full``, ``adversarial``, ``uniform``, ``frequency``, ``nce``, plus any
``METHOD@LR`` extra, e.g. ``uniform@0.01``), one training run of :class:`xmcviz.softmax.trainer.SoftmaxTrainer` with the
same seed, batch size and evaluation schedule; reported per run: the curve (step,
training seconds, acc, loglik, raw and aux variants), the tree's fit time, and the
first step / training time / time including the fit at which ``acc`` reaches each
target (``reach``: fractions of the best accuracy uniform sampling reached;
``reach_abs``: absolute accuracies).  ``aux_only``: the tree alone (the adversarial run's
``acc_aux``, the proposal it samples from and adds to its scores), the row that shows how much of
adversarial's accuracy is the tree's.  Then:

- ``step_cost``: milliseconds per training step of each method, measured interleaved
  (round-robin over methods, ``--cost-repeats`` rounds of ``--cost-steps`` steps, median),
  because the machine is shared and sequential timings drift;
- ``snr``: the gradient SNR (:func:`xmcviz.softmax.snr.snr_comparison`) of uniform,
  frequency and adversarial negatives on one probe batch, at shared raw scores
  (``*_raw``: W = 0, the final uniform / adversarial parameters) and at a shared
  predictive model (``*_debiased``: s = x.W + b with W = 0 or the final uniform model,
  each loss seeing xi = s - log q).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from xmcviz.softmax.snr import snr_comparison
from xmcviz.softmax.trainer import SoftmaxConfig, SoftmaxTrainer

CURVE_KEYS = ("step", "epoch", "time_s", "acc", "loglik", "acc_raw", "loglik_raw")


def _reach(history: list[dict], target: float, fit_s: float) -> dict | None:
    for r in history:
        if r["acc"] >= target:
            return {"step": r["step"], "time_s": round(r["time_s"], 3),
                    "time_with_fit_s": round(r["time_s"] + fit_s, 3)}
    return None


def _parse_method(spec: str, default_lr: float) -> tuple[str, str, float]:
    name, _, lr = spec.partition("@")
    return spec, name, float(lr) if lr else default_lr


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="synthetic:eurlex-like",
                    help="synthetic:NAME, or a dataset folder (XC text format from the Extreme Classification "
                         "Repository, or Mulan ARFF)")
    ap.add_argument("--methods", default="full,adversarial,uniform,frequency,nce",
                    help="comma-separated METHOD or METHOD@LR")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=SoftmaxConfig.lr, help="Adagrad step size")
    ap.add_argument("--reg", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--targets", default="0.5,0.8,0.95,1.0",
                    help="fractions of uniform's best accuracy")
    ap.add_argument("--abs-targets", default="0.1,0.15,0.2,0.25,0.3",
                    help="absolute accuracy targets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost-steps", type=int, default=20)
    ap.add_argument("--cost-repeats", type=int, default=5)
    ap.add_argument("--snr-probe", type=int, default=256)
    ap.add_argument("--snr-draws", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from xmcviz import data
    ds = data.resolve(a.data, seed=0)
    runs, trainers = {}, {}
    for spec in a.methods.split(","):
        key, name, lr = _parse_method(spec, a.lr)
        cfg = SoftmaxConfig(sampler=name, lr=lr, reg=a.reg, batch_size=a.batch_size, epochs=a.epochs,
                            seed=a.seed, eval_every_steps=a.eval_every, device="cpu", progress=False)
        tr = SoftmaxTrainer(cfg, dataset=ds)
        t0 = time.perf_counter()
        last = tr.train()
        runs[key] = {"method": name, "lr": lr, "fit_s": round(tr.fit_s, 3),
                     "wall_s": round(time.perf_counter() - t0, 2),
                     "final": {k: last[k] for k in ("step", "time_s", "acc", "loglik", "acc_raw",
                                                    "loglik_raw", "acc_aux", "loglik_aux")},
                     "best_acc": max(r["acc"] for r in tr.history),
                     "curve": [{k: r[k] for k in CURVE_KEYS} for r in tr.history]}
        trainers[key] = tr
        print(f"# {key}: acc {last['acc']:.4f} loglik {last['loglik']:.3f} "
              f"({runs[key]['wall_s']} s)", flush=True)

    base = runs.get("uniform", next(iter(runs.values())))["best_acc"]
    targets = [float(t) for t in a.targets.split(",")]
    for r, tr in zip(runs.values(), trainers.values()):
        r["reach"] = {f"{t:g}": _reach(tr.history, t * base, tr.fit_s) for t in targets}
        r["reach_abs"] = {f"{t:g}": _reach(tr.history, t, tr.fit_s)
                          for t in (float(v) for v in a.abs_targets.split(","))}

    # Per-step cost, interleaved: fresh trainers (the fit is not timed here), same batches.
    cost = {k: [] for k in trainers}
    fresh = {k: SoftmaxTrainer(tr.config, dataset=ds) for k, tr in trainers.items()}
    order = {k: f.train_rows[np.random.default_rng(a.seed).permutation(f.train_rows.size)]
             for k, f in fresh.items()}
    B = a.batch_size
    for rep in range(a.cost_repeats):
        for k, f in fresh.items():
            t0 = time.perf_counter()
            for i in range(a.cost_steps):
                j = (rep * a.cost_steps + i) % f.steps_per_epoch
                f.train_step(order[k][j * B:(j + 1) * B])
            cost[k].append((time.perf_counter() - t0) / a.cost_steps * 1e3)
    step_cost = {k: round(statistics.median(v), 3) for k, v in cost.items()}

    snr = {}
    adv = next((tr for tr in trainers.values() if tr.config.sampler == "adversarial"), None)
    if adv is not None:
        zeros = (torch.zeros_like(adv.W), torch.zeros_like(adv.b))
        # raw: every proposal's loss sees the same scores xi = x.W + b;
        # debiased: the same predictive model s = x.W + b, each loss sees xi = s - log q.
        points = {"init_raw": (zeros, False), "init_debiased": (zeros, True),
                  "adversarial_final_raw": ((adv.W, adv.b), False)}
        if "uniform" in trainers:
            u = trainers["uniform"]
            points["uniform_final_raw"] = ((u.W, u.b), False)
            points["uniform_final_debiased"] = ((u.W, u.b), True)
        for where, ((W, b), deb) in points.items():
            snr[where] = [{k: r[k] for k in ("sampler", "snr", "snr_debiased", "mean_sq_norm",
                                             "total_variance")}
                          for r in snr_comparison(adv, W=W, b=b, probe_size=a.snr_probe,
                                                  num_draws=a.snr_draws, seed=a.seed,
                                                  debiased_params=deb)]

    if adv is not None:  # the tree alone: the same number at every evaluation
        runs["aux_only"] = {"method": "aux_only", "fit_s": round(adv.fit_s, 3),
                            "final": {"acc": adv.history[-1]["acc_aux"],
                                      "loglik": adv.history[-1]["loglik_aux"]}}
    out = {"data": a.data, "dataset": getattr(ds, "name", None), "num_labels": int(ds.num_labels),
           "train_rows": int(adv.train_rows.size if adv else 0), "epochs": a.epochs,
           "batch_size": a.batch_size, "eval_every": a.eval_every, "threads": a.threads,
           "uniform_best_acc": base, "targets": targets, "step_cost_ms_median_interleaved": step_cost,
           "runs": runs, "snr": snr}
    print(json.dumps(out))
    print(markdown(out))
    return out


def markdown(out: dict) -> str:
    """Final accuracy and log-likelihood of every run (and the tree alone), with the accuracy
    after each epoch."""
    lines = [f"{out['dataset']} (L = {out['num_labels']}, {out['epochs']} epochs, batch {out['batch_size']})", "",
             "| method | acc | acc (xi only) | loglik | train s | fit s | acc after each epoch |",
             "|---|---|---|---|---|---|---|"]
    for key, r in out["runs"].items():
        f = r["final"]
        per_epoch = [c["acc"] for c in r.get("curve", []) if float(c["epoch"]).is_integer() and c["epoch"] > 0]
        raw = f"{f['acc_raw']:.3f}" if "acc_raw" in f else ""
        train = f"{f['time_s']:.1f}" if "time_s" in f else ""
        lines.append(f"| {key} | {f['acc']:.3f} | {raw} | {f['loglik']:.3f} | {train} | {r['fit_s']:.1f} | "
                     + " ".join(f"{v:.3f}" for v in per_epoch) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
