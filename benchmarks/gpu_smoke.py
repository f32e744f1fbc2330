"""Smoke runs of every training path on one device (the GPU check's first part; prints JSON).

On ``synthetic:tiny`` (seconds per run), on ``--device`` (``cuda`` by default; ``cpu`` checks
the script itself on a machine without a GPU):

* every sampler with the four instruments on (``ranks``, ``freq``, ``grad``, ``staleness`` at
  short intervals), with ``sparse_updates`` on and off;
* an MIPS-s run interrupted after one epoch and resumed: the resumed index must live on the
  run's GPU (when faiss has GPU support), and the final metrics are compared with the
  uninterrupted run's;
* the first-label softmax trainer's four methods;
* same-seed determinism: two identical runs, their metrics and final label matrices compared.
  On CUDA, float atomics (``index_add_``, sparse products) change the order of additions, so
  this is reported, not asserted.

One JSON line per check (``ok``: it ran and its assertions held; ``error``: what failed), then
a summary line; the exit status is 1 when any check (determinism aside) failed.

    python benchmarks/gpu_smoke.py --device cuda --out runs/gpu_check/smoke.jsonl
    python benchmarks/gpu_smoke.py --device cpu          # the script itself, without a GPU
"""
from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz import data as xdata
from xmcviz.core.trainer import TrainConfig, Trainer
from xmcviz.hooks import make_hooks
from xmcviz.samplers import SAMPLER_NAMES

HOOKS = "ranks:2,freq,grad:2,staleness:2"


def _cfg(args, tmp: Path, name: str, **kw) -> TrainConfig:
    base = dict(model="mlp", hidden=32, sampler="uniform", negatives=10, batch_size=128, epochs=2,
                seed=0, device=args.device, progress=False, out=str(tmp / name))
    base.update(kw)
    return TrainConfig(**base)


def check(out: JsonLines, failures: list, name: str, fn, **fields) -> None:
    """Run ``fn()`` (returning a dict of figures) and emit its record; failures are counted."""
    t0 = time.perf_counter()
    try:
        rec = {"check": name, **fields, "ok": True, **(fn() or {})}
    except Exception as e:  # report and continue: one broken path must not hide the others
        rec = {"check": name, **fields, "ok": False, "error": f"{type(e).__name__}: {e}",
               "where": traceback.format_exc().strip().splitlines()[-3:]}
        failures.append(name)
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    out.emit(rec)


def sampler_run(args, ds, tmp: Path, sampler: str, sparse: bool) -> dict:
    # One epoch, no warm-up: the MIPS index (and the staleness hook) work from the first step.
    cfg = _cfg(args, tmp, f"{sampler}-{sparse}", sampler=sampler, sparse_updates=sparse, epochs=1)
    tr = Trainer(cfg, dataset=ds, hooks=make_hooks(HOOKS))
    last = tr.train()
    files = sorted(p.name for p in (Path(cfg.out) / "hooks").glob("*.jsonl"))
    assert {"ranks.jsonl", "freq.jsonl", "grad.jsonl"} <= set(files), files
    return {"P@1": round(last["P@1"], 4), "hook_files": files}


def resume_run(args, ds, tmp: Path) -> dict:
    from xmcviz.samplers.faiss_index import faiss_has_gpu
    full = Trainer(_cfg(args, tmp, "mips-full", sampler="mips-s"), dataset=ds)
    full.train()
    Trainer(_cfg(args, tmp, "mips-part", sampler="mips-s", epochs=1), dataset=ds).train()
    resumed = Trainer(_cfg(args, tmp, "mips-part", sampler="mips-s", resume=True), dataset=ds)
    on_gpu = resumed.sampler.index.on_gpu
    if resumed.device.type == "cuda" and faiss_has_gpu():
        assert on_gpu, "the resumed MIPS index is not on the GPU"
    resumed.train()
    a, b = full.history[-1], resumed.history[-1]
    return {"index_on_gpu_after_resume": on_gpu,
            "P@1_uninterrupted": round(a["P@1"], 4), "P@1_resumed": round(b["P@1"], 4),
            "max_metric_diff": max(abs(a[k] - b[k]) for k in ("P@1", "P@3", "P@5"))}


def softmax_run(args, ds, method: str) -> dict:
    from xmcviz.softmax.trainer import SoftmaxConfig, SoftmaxTrainer
    tr = SoftmaxTrainer(SoftmaxConfig(sampler=method, epochs=1, batch_size=64, device=args.device,
                                      progress=False), dataset=ds)
    rec = tr.train()
    assert all(v == v for k, v in rec.items() if k.startswith(("acc", "loglik"))), rec  # not NaN
    return {k: round(v, 4) for k, v in rec.items() if k in ("acc", "loglik")}


def determinism(args, ds, tmp: Path) -> dict:
    runs = []
    for i in range(2):
        tr = Trainer(_cfg(args, tmp, f"det{i}", sampler="mips-s", out=None), dataset=ds)
        tr.train()
        runs.append(tr)
    h0, h1 = ([{k: v for k, v in r.items() if k not in ("time_s", "eval_s")} for r in t.history]
              for t in runs)
    W0, W1 = (t.model.W.detach().float().cpu() for t in runs)
    return {"metrics_identical": h0 == h1, "W_identical": bool(torch.equal(W0, W1)),
            "W_max_abs_diff": float((W0 - W1).abs().max()),
            "P@5": [round(t.history[-1]["P@5"], 4) for t in runs]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", default="synthetic:tiny")
    ap.add_argument("--samplers", default=",".join(SAMPLER_NAMES))
    ap.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = ap.parse_args(argv)
    ds = xdata.resolve(args.data, seed=0)
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu_smoke-") as t, JsonLines(args.out, "a") as out:
        tmp = Path(t)
        for sampler in args.samplers.split(","):
            for sparse in (True, False):
                check(out, failures, "sampler", lambda: sampler_run(args, ds, tmp, sampler, sparse),
                      sampler=sampler, sparse_updates=sparse)
        check(out, failures, "resume-mips-s", lambda: resume_run(args, ds, tmp))
        for method in ("adversarial", "uniform", "frequency", "nce"):
            check(out, failures, "softmax", lambda: softmax_run(args, ds, method), method=method)
        check(out, [], "determinism", lambda: determinism(args, ds, tmp))  # reported only
        out.emit({"summary": "gpu_smoke", "device": args.device, "failed": failures,
                  "ok": not failures})
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
