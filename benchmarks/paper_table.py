"""The MIPS paper's comparison table with one command: uniform, MIPS-a, MIPS-s, meta, top-uniform
and full negatives on one dataset, over several seeds.

Settings (the paper's where they apply): the mlp model (128 hidden units, input dropout 0.2),
R = 100 negatives (at most L - 1), k = 5 MIPS / exact negatives for MIPS-s and top-uniform,
MIPS-a and MIPS-s start with one epoch of uniform negatives and refresh their index once per
epoch (K = sqrt(L) clusters, tau = min(16, K) probes), meta uses the meta-classifier
defaults (K = the power of two nearest sqrt(L) label clusters, m = ceil(R K / L), loss
weight 1); the trainer's batch size (256) and Adam step size (1e-2).  Every run of a seed
uses the same model initialisation and batch order.

Per sampler it reports P@1/3/5 and PSP@1/3/5 after the last epoch (mean +- sd over the
seeds), seconds of training per epoch (evaluation excluded), the extra memory the sampler
holds (MIPS: the snapshot of W and the IVF index; meta: the label clusters and the head with
its Adam moments; the others: none) and the one-off costs (MIPS: index builds, summed over the
run; meta: clustering the labels).  Meta is reported twice: ranked over all labels by the
label scores, like every other sampler, and under LightXML's prediction (only the labels of
the top-m clusters, ranked by label and cluster scores together).  One JSON line per run and
per sampler (``--out``) and a markdown table (printed, and written to ``--markdown``).  Runs on
a GPU when present (``--device auto``).  Several processes may append to one ``--out`` (e.g.
one per group of samplers); ``--table-only`` then prints the table of what it holds.

    python benchmarks/paper_table.py --data synthetic:eurlex-like --epochs 5
    python benchmarks/paper_table.py --data DIR/Eurlex-4K --seeds 0,1,2 --out eurlex.jsonl

``DIR/Eurlex-4K`` is a folder with the Extreme Classification Repository's ``train.txt`` and
``test.txt`` (or Mulan ``.arff`` files): see the README.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz import data as xdata
from xmcviz.core.trainer import TrainConfig, Trainer
from xmcviz.hooks.base import Hook
from xmcviz.validation import check_choice, check_int

SAMPLERS = ("uniform", "mips-a", "mips-s", "meta", "top-uniform", "full")
MIPS = ("mips-a", "mips-s")
METRICS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5")
R, K_MIX = 100, 5


class RefreshCost(Hook):
    """Sums the seconds of the sampler's index builds (cold and warm)."""

    name = "refresh_cost"

    def __init__(self) -> None:
        super().__init__(every=1 << 62)  # no per-step work
        self.seconds, self.builds = 0.0, 0

    def on_refresh(self, info: dict) -> None:
        self.seconds += float(info.get("seconds", 0.0))
        self.builds += 1


def sampler_bytes(sampler) -> int:
    """Memory the sampler holds besides the model (see the module docstring)."""
    inner = getattr(sampler, "inner", sampler)
    if inner.name == "meta":
        head = sum(p.numel() * p.element_size() for p in inner.trainable())
        return inner.clusters.memory_bytes() + 3 * head  # the head and its two Adam moments
    index = getattr(inner, "index", None)
    if index is None or not index.is_built:
        return 0
    snap, bias = index.snapshot
    vectors = snap.numel() * snap.element_size()
    # The snapshot, the IVF lists' copy of the vectors and their int64 ids, the centroids.
    return 2 * vectors + snap.shape[0] * 8 + index.centroids.numel() * 4 + \
        (0 if bias is None else bias.numel() * 4)


def run_one(ds, data: str, sampler: str, seed: int, a) -> dict:
    L = int(ds.num_labels)
    kw = dict(sampler=sampler, negatives=min(R, L - 1), epochs=a.epochs, seed=seed,
              device=a.device, progress=False, eval_rows=a.eval_rows)
    if sampler in ("mips-s", "top-uniform"):
        kw["mips_k"] = K_MIX
    if sampler in MIPS:
        kw.update(warmup_epochs=min(1, a.epochs - 1), refreshes_per_epoch=1)
    if sampler == "meta" and a.meta_topk is not None:
        kw["meta_topk"] = a.meta_topk
    cost = RefreshCost()
    t0 = time.perf_counter()
    trainer = Trainer(TrainConfig(**kw), dataset=ds, hooks=[cost])
    build_s = time.perf_counter() - t0
    final = trainer.train()
    setup = getattr(getattr(trainer.sampler, "inner", trainer.sampler), "setup_info", {}) or {}
    lightxml = lightxml_metrics(trainer) if sampler == "meta" else {}
    return {"kind": "run", "data": getattr(ds, "name", None) or data,
            "meta_topk": getattr(getattr(trainer.sampler, "inner", trainer.sampler), "topk", None), "sampler": sampler, "seed": seed, "epochs": a.epochs,
            "device": str(trainer.device), "labels": L,
            **{m: final.get(m) for m in METRICS},
            "s_per_epoch": trainer.time_s / a.epochs,
            "extra_mb": sampler_bytes(trainer.sampler) / 2**20,
            "index_builds": cost.builds, "index_s": cost.seconds,
            "cluster_s": setup.get("cluster_seconds"), "trainer_build_s": build_s,
            "meta_recall": final.get("meta_recall"), **lightxml}


@torch.no_grad()
def lightxml_metrics(trainer) -> dict:
    """The meta run's metrics under LightXML's prediction (the labels of the top-m clusters
    only, ranked by label and cluster scores together), suffixed ``_lx``."""
    from xmcviz.core.evaluate import evaluate
    from xmcviz.core.trainer import csr_to_torch
    import scipy.sparse as sp
    meta = getattr(trainer.sampler, "inner", trainer.sampler)
    model, X = trainer.model, sp.csr_matrix(trainer.dataset.X_test)
    bias = model.bias.detach() if getattr(model, "bias", None) is not None else None
    was = model.training
    model.eval()
    try:
        top = torch.cat([meta.candidate_topk(model.embed(csr_to_torch(X[i:i + 512], trainer.device)),
                                             model.W.detach(), 5, bias)
                         for i in range(0, X.shape[0], 512)])
    finally:
        model.train(was)
    got = evaluate(top, trainer.dataset.Y_test, ks=(1, 3, 5), inv_propensity=trainer.inv_propensity)
    return {f"{m}_lx": got[m] for m in METRICS}


def summarise(runs: list[dict]) -> dict:
    def ms(xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return None, None
        return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
    out = {"kind": "summary", "data": runs[0]["data"], "sampler": runs[0]["sampler"],
           "seeds": [r["seed"] for r in runs], "epochs": runs[0]["epochs"]}
    for key in METRICS + ("s_per_epoch", "extra_mb", "index_s", "cluster_s", "meta_recall"):
        out[key], out[key + "_sd"] = ms([r[key] for r in runs])
    out["index_builds"] = runs[0]["index_builds"]
    if all(m + "_lx" in r for r in runs for m in METRICS):
        out["lightxml"] = {m: ms([r[m + "_lx"] for r in runs]) for m in METRICS}
    return out


def markdown(summaries: list[dict], a, machine: str) -> str:
    def pm(s, k, scale=100.0):
        return "-" if s[k] is None else f"{scale * s[k]:.2f} ± {scale * s[k + '_sd']:.2f}"
    name = summaries[0]["data"] if summaries else a.data
    lines = [f"**{name}**: {a.epochs} epochs, seeds {a.seeds}, {machine}.  P@k and PSP@k in %, "
             "mean ± sd over the seeds.", "",
             "| sampler | P@1 | P@3 | P@5 | PSP@1 | PSP@3 | PSP@5 | s / epoch | extra MB | "
             "one-off s |", "|---|" + "---|" * 9]
    for s in summaries:
        one_off = []
        if s["index_s"]:
            one_off.append(f"index {s['index_s']:.1f} ({s['index_builds']} builds)")
        if s["cluster_s"] is not None:
            one_off.append(f"clusters {s['cluster_s']:.1f}")
        lines.append(f"| {s['sampler']} | " + " | ".join(pm(s, m) for m in METRICS) +
                     f" | {s['s_per_epoch']:.1f} | {s['extra_mb']:.2f} | "
                     f"{', '.join(one_off) or '-'} |")
        if s.get("lightxml"):
            lx = s["lightxml"]
            lines.append(f"| {s['sampler']}, LightXML prediction | " + " | ".join(
                f"{100 * lx[m][0]:.2f} ± {100 * lx[m][1]:.2f}" for m in METRICS) + " | | | |")
    return "\n".join(lines) + "\n"


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="a dataset folder or synthetic:NAME")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--eval-rows", type=int, default=None,
                   help="test rows of the evaluations before the last (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--meta-topk", type=int, default=None,
                   help="m for meta (default: the sampler's, ceil(R K / L))")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (more only oversubscribe a small, shared machine)")
    p.add_argument("--table-only", action="store_true",
                   help="no training: the table of the runs already in --out (several "
                        "processes may fill one --out, e.g. one per sampler)")
    p.add_argument("--out", default=None, help="append the JSON lines to this file")
    p.add_argument("--markdown", default=None, help="write the markdown table to this file")
    a = p.parse_args(argv)
    a.samplers = [check_choice("sampler", s, SAMPLERS) for s in a.samplers.split(",") if s]
    a.seeds = [check_int("seed", int(s), 0) for s in a.seeds.split(",") if s]
    check_int("epochs", a.epochs, 1)
    return a


def main(argv=None) -> list[dict]:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    machine = "GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() and \
        a.device != "cpu" else f"CPU, {a.threads} torch thread(s)"
    summaries = []
    if a.table_only:
        if not a.out or not Path(a.out).is_file():
            raise SystemExit(f"--table-only reads --out: {a.out!r} is not a file")
        recs = [json.loads(line) for line in Path(a.out).read_text().splitlines() if line.strip()]
        for s in a.samplers:
            runs = [r for r in recs if r.get("kind") == "run" and r["sampler"] == s
                    and r["seed"] in a.seeds and r["epochs"] == a.epochs
                    and (s != "meta" or a.meta_topk is None or r.get("meta_topk") == a.meta_topk)]
            if any("P@1_lx" in r for r in runs):  # a meta rerun that also has LightXML's metrics
                runs = [r for r in runs if "P@1_lx" in r]
            if runs:
                summaries.append(summarise(runs))
    else:
        ds = xdata.resolve(a.data)
        with JsonLines(a.out, mode="a") as out:
            for s in a.samplers:
                runs = [out.emit(run_one(ds, a.data, s, seed, a)) for seed in a.seeds]
                summaries.append(out.emit(summarise(runs)))
    table = markdown(summaries, a, machine)
    print(table)
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(table)
    return summaries


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
