"""Time per training step of every sampler at L = 4K, 64K, 1M labels (issue 3, item 8).

Setting: synthetic data (sparse inputs, D = 5000 features, 100 non-zeros per row, 5 positives
per row from a power-law label prior), the ``mlp`` model (d = 128), B = 256, R = 100, k = 5 for
MIPS-s and top-uniform, K = sqrt(L) clusters and tau = 16 probes for the MIPS index; meta
with its defaults (K = the power of two nearest sqrt(L) label clusters, m = ceil(R K / L));
its step includes the meta head's forward, loss and update, not the one-off clustering
(``cluster_s`` in its record).

What is timed (all in one process, medians of repeated rounds, the configurations of a round
interleaved and their order rotated from round to round, warm-up rounds excluded):

* ``step``: ``Trainer._train_step`` (batch slicing, embedding, sampling, loss, backward, both
  optimisers) for each sampler at each L; the index refresh is not in it (timed apart).  Each
  timed step follows ``--settle`` untimed steps of the same trainer, as in training.
* ``search``: for MIPS-a / MIPS-s, the raw faiss ``search`` the step makes, on the same
  queries, right after the step (target: MIPS-s step <= 1.25x its search).
* ``assembly``: MIPS candidate assembly from the search results, our batched
  :func:`xmcviz.samplers.mips.assemble_negatives` against a per-example Python loop
  (target: >= 20x).
* ``refresh``: a cold index build (k-means from scratch) and a warm refresh (from the previous
  centroids, after W has trained), per L.
* ``uniform-scaling``: the uniform step at every L, interleaved across L, with a phase
  breakdown and the bare memory operations a row-sparse step cannot avoid (gather the
  B (P + R) scored rows; one pass reading and writing the U touched rows of W and
  of both Adam moments, no arithmetic; torch's five passes over them for comparison), at the
  same sizes (target: L = 1M step <= 1.5x the L = 4K step).

Wall-clock (``ms_per_step``) and process CPU time (``cpu_ms_per_step``) are both recorded: on
a shared machine CPU time is less affected by other processes (it still sees their cache and
memory-bandwidth contention).  Each configuration prints one JSON object; all are appended to
``--out`` and a markdown report replaces the generated
section of ``--markdown`` (``benchmarks/RESULTS.md``).

    python benchmarks/step_cost.py [--labels 4096,65536,1048576] [--samplers ...]
        [--device cpu] [--steps N] [--out benchmarks/results/step_cost.jsonl]

``--device cuda`` runs the steps and the index on a GPU (faiss-gpu needed for a GPU index);
that path has not been run on a GPU yet.
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz.data.dataset import Dataset
from xmcviz.samplers.base import Positives
from xmcviz.samplers.mips import assemble_negatives
from xmcviz.samplers.ops import sorted_positive_table
from xmcviz.core.trainer import TrainConfig, Trainer, csr_to_torch
from xmcviz.core.loss import model_loss
from xmcviz.validation import check_choice, check_int

ALL_SAMPLERS = ("uniform", "frequency", "top", "top-uniform", "mips-a", "mips-s", "meta", "full")
MIPS = ("mips-a", "mips-s")
B, R, K_MIX, DIM = 256, 100, 5, 128
FEATURES, NNZ, POSITIVES = 5000, 100, 5
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- data
def bench_dataset(num_labels: int, rows: int = 4096, seed: int = 0) -> Dataset:
    """Synthetic sparse inputs and power-law labels (no structure needed for timing)."""
    rng = np.random.default_rng(seed)
    cols = np.sort(rng.integers(0, FEATURES, size=(rows, NNZ)), axis=1)
    X = sp.csr_matrix((rng.random(rows * NNZ, dtype=np.float32), cols.ravel(),
                       np.arange(0, rows * NNZ + 1, NNZ)), shape=(rows, FEATURES))
    X.sum_duplicates()
    X = sp.csr_matrix(X.multiply(1.0 / np.sqrt(X.multiply(X).sum(1))).astype(np.float32))
    # Zipf prior (exponent 1.1, offset 3) over a random permutation of the labels.
    prior = (rng.permutation(num_labels) + 3.0) ** -1.1
    labels = rng.choice(num_labels, size=(rows, POSITIVES), p=prior / prior.sum())
    Y = sp.csr_matrix((np.ones(rows * POSITIVES, np.float32), labels.ravel(),
                       np.arange(0, rows * POSITIVES + 1, POSITIVES)), shape=(rows, num_labels))
    Y.sum_duplicates()
    Y.data[:] = 1.0
    Y.sort_indices()
    X.sort_indices()
    return Dataset(X, Y, X[:64], Y[:64], name=f"bench-{num_labels}")


# --------------------------------------------------------------------------- timing
class Clock:
    """Wall and process CPU time of a block (synchronising CUDA around it)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.wall = (time.perf_counter() - self.w) * 1e3
        self.cpu = (time.process_time() - self.c) * 1e3


def med(xs) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def rotated(items: list, rnd: int) -> list:
    """``items`` started at position ``rnd`` (modulo its length): round ``rnd``'s order."""
    k = rnd % len(items)
    return items[k:] + items[:k]


def batch_rows(rnd: int, n: int) -> np.ndarray:
    return np.random.default_rng((7, rnd)).permutation(n)[:B]


def make_trainer(name: str, ds: Dataset, device: str, nprobe: int | None = None) -> Trainer:
    cfg = TrainConfig(sampler=name, negatives=R, batch_size=B, epochs=1, device=device,
                      progress=False, hidden=DIM, seed=0,
                      mips_k=K_MIX if name in ("mips-s", "top-uniform") else None,
                      # The index is built (and refreshed) by the benchmark, outside the steps.
                      refresh_every=10 ** 9 if name in MIPS else None,
                      nprobe=nprobe if name in MIPS else None)
    return Trainer(cfg, ds)


# --------------------------------------------------------------------------- MIPS pieces
def mips_query(t: Trainer, X, Y, rows) -> tuple[torch.Tensor, Positives, int]:
    """The batch's embeddings (no grad), positives and the search width the sampler uses."""
    with torch.no_grad():
        emb = t.model.embed(csr_to_torch(X[rows], t.device))
    pos = Positives.from_csr(Y, rows, device=t.device)
    _, count = sorted_positive_table(pos)
    return emb, pos, min(t.sampler.k + int(count.max()), t.num_labels)


def raw_search(index, emb: torch.Tensor, width: int):
    """Only the faiss call (queries already prepared as MipsIndex.search prepares them)."""
    q = emb.detach().to(torch.float32)
    if index.has_bias:
        q = torch.cat([q, q.new_ones(q.shape[0], 1)], dim=1)
    q = q.to(index._snapshot.device).contiguous()
    return q, (lambda: index._index.search(q, width))


def loop_assemble(cand: np.ndarray, positives: list[list[int]], k: int, num_negatives: int,
                  num_labels: int, rng: np.random.Generator) -> np.ndarray:
    """Per-example candidate lists, the way the published code builds them: a Python loop
    over the rows; per row, walk the search results dropping positives until k are kept,
    then fill with uniform negatives drawn one by one, rejecting positives and repeats."""
    out = np.empty((len(cand), num_negatives), dtype=np.int64)
    for i, row in enumerate(cand.tolist()):
        pos = set(positives[i])
        chosen: list[int] = []
        seen: set[int] = set()
        for j in row:
            if j >= 0 and j not in pos:
                chosen.append(j)
                seen.add(j)
                if len(chosen) == k:
                    break
        while len(chosen) < num_negatives:
            j = int(rng.integers(num_labels))
            if j not in pos and j not in seen:
                chosen.append(j)
                seen.add(j)
        out[i] = chosen
    return out


def resettle(t: Trainer, X, Y, rnd: int, a) -> None:
    """``a.settle`` untimed steps of ``t`` before its timed one.  In training, steps follow
    each other; here a configuration's turn comes after other configurations' steps (at 1M,
    1.5 GB of other matrices, and top-uniform sweeps all of W), which leave none of its
    data in the caches.  The untimed steps put it back in the state a training run is in."""
    for j in range(a.settle):
        t._train_step(X, Y, batch_rows(20_000 + 7 * rnd + j, X.shape[0]))


# --------------------------------------------------------------------------- phases
def step_phases(t: Trainer, X, Y, rows) -> dict:
    """The trainer's step cut into phases (the same calls as ``Trainer._train_step``, no hooks)."""
    dev, T = t.device, {}
    clk = Clock(dev)
    with clk:
        x = csr_to_torch(X[rows], dev)
        pos = Positives.from_csr(Y, rows, device=dev)
    T["batch"] = clk.cpu
    with clk:
        emb = t.model.embed(x)
    T["embed"] = clk.cpu
    with clk:
        neg = t.sampler.sample(emb.detach(), pos, generator=t.generator, W=t.model.W.detach())
    T["sample"] = clk.cpu
    with clk:
        out = model_loss(t.model, emb, pos, neg, t.config.eta_ratio)
        float(out.loss.detach())
    T["gather+loss"] = clk.cpu
    with clk:
        for o in t.optimizers:
            o.zero_grad(set_to_none=True)
        out.loss.backward()
    T["backward"] = clk.cpu
    with clk:
        t.optimizers[1].step()
    T["encoder Adam"] = clk.cpu
    with clk:
        t.optimizers[0].step()
    T["label RowSparseAdam"] = clk.cpu
    T["touched rows U"] = int(t.model.W.grad._nnz())
    return T


@functools.cache
def _touch_rows_kernel():
    """A numba pass that reads and writes each of the U rows of W, m and v once, with no
    arithmetic: the memory floor of the fused row-sparse Adam step.  None without numba."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(boundscheck=False)
    def touch(w, m, v, ids, z):
        n, d = ids.shape[0], w.shape[1]
        for r in range(n):
            i = ids[r]
            for j in range(d):  # z = 0 at run time: loads and stores the compiler must keep
                w[i, j] += z
                m[i, j] += z
                v[i, j] += z

    return touch


def bare_memory(W: torch.Tensor, m: torch.Tensor, v: torch.Tensor, ids: torch.Tensor,
                uniq: torch.Tensor, clk: Clock) -> dict:
    """The scattered row accesses a row-sparse step cannot avoid, alone: gather the scored
    rows (forward), then one pass reading and writing the U touched rows of W, m, v (the
    floor of the label update; torch's five passes for comparison)."""
    T = {}
    with clk:
        W.index_select(0, ids)
    T["gather scored rows"] = clk.cpu
    touch = _touch_rows_kernel() if W.device.type == "cpu" else None
    if touch is not None:
        args = (W.numpy(), m.numpy(), v.numpy(), uniq.numpy(), np.float32(0.0))
        with clk:
            touch(*args)
        T["one pass over U rows of W, m, v"] = clk.cpu
    with clk:
        mU, vU, wU = m.index_select(0, uniq), v.index_select(0, uniq), W.index_select(0, uniq)
        m.index_copy_(0, uniq, mU)
        v.index_copy_(0, uniq, vU)
        W.index_add_(0, uniq, wU, alpha=0.0)
    T["(torch: 5 passes over U rows)"] = clk.cpu
    return T


# --------------------------------------------------------------------------- main
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--labels", default="4096,65536,1048576")
    p.add_argument("--samplers", default=",".join(ALL_SAMPLERS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=15, help="timed rounds per configuration")
    p.add_argument("--settle", type=int, default=1,
                   help="untimed steps of a configuration right before each timed one")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    p.add_argument("--nprobe", type=int, default=None,
                   help="tau for the MIPS index (default: the sampler's, min(16, K))")
    p.add_argument("--full-max-labels", type=int, default=65536,
                   help="largest L for the full loss (B x L scores)")
    p.add_argument("--top-max-labels", type=int, default=65536,
                   help="largest L for top (O(B L d) a step, top-R selection)")
    p.add_argument("--exhaustive-max-labels", type=int, default=1 << 21,
                   help="largest L for top-uniform (O(B L d) a step)")
    p.add_argument("--cold-repeats", default="4096:3,65536:2",
                   help="cold builds per L (L:n,...; others: 1)")
    p.add_argument("--out", default=str(HERE / "results" / "step_cost.jsonl"))
    p.add_argument("--markdown", default=str(HERE / "RESULTS.md"),
                   help="report file: the section between the step_cost markers is replaced "
                        "(appended when the markers are missing); the rest is left alone")
    a = p.parse_args(argv)
    a.labels = [check_int("labels", int(x), 200) for x in a.labels.split(",") if x]
    a.samplers = [check_choice("sampler", s, ALL_SAMPLERS) for s in a.samplers.split(",") if s]
    check_int("steps", a.steps, 1)
    check_int("warmup", a.warmup, 1)
    check_int("threads", a.threads, 1)
    a.cold_repeats = {int(k): int(v) for k, v in
                      (kv.split(":") for kv in a.cold_repeats.split(",") if kv)}
    return a


def machine_info(device: torch.device) -> dict:
    import faiss
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "device": str(device),
            "load_avg_start": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(a: argparse.Namespace) -> list[dict]:
    import faiss
    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    device = torch.device(a.device)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    recs: list[dict] = []
    with JsonLines(a.out, mode="a") as out:  # --out keeps every run
        recs.append(out.emit({"kind": "machine", **machine_info(device),
                          "time": time.strftime("%Y-%m-%d %H:%M:%S")}))
        uniform_trainers = {}
        for L in a.labels:
            recs += bench_labels(L, a, device, out, uniform_trainers)
        if "uniform" in a.samplers and len(uniform_trainers) > 1:
            recs += bench_uniform_scaling(uniform_trainers, a, device, out)
    write_markdown(recs, a)
    return recs


def bench_labels(L: int, a, device, out, uniform_trainers: dict) -> list[dict]:
    recs = []
    ds = bench_dataset(L)
    X, Y = sp.csr_matrix(ds.X_train), sp.csr_matrix(ds.Y_train)
    names = []
    for s in a.samplers:
        limit = {"full": a.full_max_labels, "top": a.top_max_labels,
                 "top-uniform": a.exhaustive_max_labels}.get(s)
        if limit is not None and L > limit:
            recs.append(out.emit({"kind": "step", "labels": L, "sampler": s, "device": str(device),
                              "skipped": f"L > {limit} (--full-max-labels, "
                                         f"--top-max-labels, --exhaustive-max-labels)"}))
        else:
            names.append(s)
    trainers = {s: make_trainer(s, ds, str(device), a.nprobe) for s in names}
    clk = Clock(device)

    # The MIPS index: one cold build (timed) shared by MIPS-a and MIPS-s (same initial W).
    mips = [s for s in names if s in MIPS]
    index = None
    if mips:
        t0 = trainers[mips[0]]
        t0.sampler.refresh(t0.model.W.detach(), 0, 0)  # first build: cold
        index = t0.sampler.index
        colds = [dict(index.last_build_info)]
        for _ in range(a.cold_repeats.get(L, 1) - 1):
            colds.append(index.build(t0.model.W.detach()))
        for s in mips[1:]:
            trainers[s].sampler.index = index
            trainers[s].sampler.last_refresh_step = 0
        assert all(not trainers[s].sampler.refresh_due(0, 0) for s in mips)

    wall = {s: [] for s in names}
    cpu = {s: [] for s in names}
    touched = {s: [] for s in names}
    search = {s: ([], []) for s in mips}
    asm = {s: ([], [], []) for s in mips}  # vectorised, loop (cpu ms), wall loop
    rng = np.random.default_rng(0)
    for rnd in range(a.warmup + a.steps):
        rows = batch_rows(rnd, X.shape[0])
        for s in rotated(names, rnd):
            t = trainers[s]
            resettle(t, X, Y, rnd, a)
            with clk:
                t._train_step(X, Y, rows)
            if rnd < a.warmup:
                continue
            wall[s].append(clk.wall)
            cpu[s].append(clk.cpu)
            touched[s].append(int(t.model.W.grad._nnz()))
            if s in MIPS:
                emb, pos, width = mips_query(t, X, Y, rows)
                _, call = raw_search(index, emb, width)
                with clk:
                    _, cand = call()
                search[s][0].append(clk.wall)
                search[s][1].append(clk.cpu)
                k = t.sampler.k
                pos_lists = [Y.indices[Y.indptr[r]:Y.indptr[r + 1]].tolist() for r in rows]
                cand_np = cand.cpu().numpy()
                for _ in range(3):  # both versions alternately, on the same search results
                    with clk:
                        assemble_negatives(cand, pos, k, R, L, t.generator)
                    asm[s][0].append(clk.cpu)
                    with clk:
                        got = loop_assemble(cand_np, pos_lists, k, R, L, rng)
                    asm[s][1].append(clk.cpu)
                    asm[s][2].append(clk.wall)
                if rnd == a.warmup:  # the loop version keeps the contract too
                    assert not any(set(g) & set(p) for g, p in zip(got.tolist(), pos_lists))
                    assert all(len(set(g)) == R for g in got.tolist())
    for s in names:
        rec = {"kind": "step", "labels": L, "sampler": s, "device": str(device),
               "ms_per_step": med(wall[s]), "cpu_ms_per_step": med(cpu[s]), "steps": a.steps,
               "touched_rows": int(med(touched[s])), "batch": B, "negatives": R, "dim": DIM}
        if s == "meta":  # the label clustering is a one-off cost, not part of a step
            info = trainers[s].sampler.setup_info
            rec.update(clusters=info["clusters"], topk=info["topk"],
                       cluster_s=info["cluster_seconds"])
        if s in MIPS:
            idx = trainers[s].sampler.index
            rec.update(search_ms=med(search[s][0]), search_cpu_ms=med(search[s][1]),
                       step_over_search=med(wall[s]) / med(search[s][0]),
                       cpu_step_over_search=med(cpu[s]) / med(search[s][1]),
                       clusters=idx.last_build_info["clusters"], nprobe=idx.effective_nprobe,
                       k=trainers[s].sampler.k)
        recs.append(out.emit(rec))
    for s in mips:
        vec, loop, loop_wall = asm[s]
        recs.append(out.emit({"kind": "assembly", "labels": L, "sampler": s, "k": trainers[s].sampler.k,
                          "device": str(device), "vectorised_cpu_ms": med(vec),
                          "loop_cpu_ms": med(loop), "loop_wall_ms": med(loop_wall),
                          "speedup": med(loop) / med(vec)}))
    if mips:
        # Warm refresh after W has trained for warmup + steps steps; then a cold one, timed.
        t0 = trainers[mips[0]]
        warm = [t0.sampler.index.refresh(t0.model.W.detach())
                for _ in range(max(1, a.cold_repeats.get(L, 1)))]
        recs.append(out.emit({
            "kind": "refresh", "labels": L, "device": str(device),
            "cold_s": med([c["seconds"] for c in colds]),
            "cold_kmeans_s": med([c["kmeans_seconds"] for c in colds]),
            "warm_s": med([w["seconds"] for w in warm]),
            "warm_kmeans_s": med([w["kmeans_seconds"] for w in warm]),
            "add_s": med([w["add_seconds"] for w in warm]), "cold_runs": len(colds),
            "warm_runs": len(warm), "cold_iterations": colds[0]["iterations"],
            "warm_iterations": warm[0]["iterations"], "clusters": colds[0]["clusters"],
            "cold_over_warm": med([c["seconds"] for c in colds]) / med([w["seconds"] for w in warm])}))
    if "uniform" in trainers:
        uniform_trainers[L] = (trainers["uniform"], X, Y)
    return recs


def bench_uniform_scaling(uniform_trainers: dict, a, device, out) -> list[dict]:
    """Uniform step, its phases and the bare memory operations, interleaved across L."""
    Ls = sorted(uniform_trainers)
    clk = Clock(device)
    steps = {L: ([], []) for L in Ls}
    phases = {L: [] for L in Ls}
    bare = {L: [] for L in Ls}
    # Buffers for the bare-memory reference: a W-sized matrix and two moment-sized ones.
    mats = {L: tuple(torch.randn(L, DIM, device=device) for _ in range(3)) for L in Ls}
    gen = torch.Generator(device=device).manual_seed(1)
    # Whole steps first, with nothing else between them: a step timed right after the bare
    # sweeps below would start with the caches full of those buffers, which training never does.
    for rnd in range(a.warmup + 2 * a.steps):
        for L in rotated(Ls, rnd):
            t, X, Y = uniform_trainers[L]
            resettle(t, X, Y, rnd, a)
            with clk:
                t._train_step(X, Y, batch_rows(1000 + rnd, X.shape[0]))
            if rnd >= a.warmup:
                steps[L][0].append(clk.wall)
                steps[L][1].append(clk.cpu)
    for rnd in range(a.warmup + 2 * a.steps):
        for L in rotated(Ls, rnd):
            t, X, Y = uniform_trainers[L]
            t._train_step(X, Y, batch_rows(3000 + rnd, X.shape[0]))  # phases follow a step
            ph = step_phases(t, X, Y, batch_rows(5000 + rnd, X.shape[0]))
            ids = torch.randint(0, L, (B * (R + POSITIVES),), generator=gen, device=device)
            uniq = torch.unique(ids)
            bm = bare_memory(*mats[L], ids, uniq, clk)
            if rnd >= a.warmup:
                phases[L].append(ph)
                bare[L].append(bm)
    recs = []
    base = Ls[0]
    for L in Ls:
        ph = {k: med([p[k] for p in phases[L]]) for k in phases[L][0]}
        bm = {k: med([b[k] for b in bare[L]]) for k in bare[L][0]}
        recs.append(out.emit({
            "kind": "uniform-scaling", "labels": L, "sampler": "uniform", "device": str(device),
            "ms_per_step": med(steps[L][0]), "cpu_ms_per_step": med(steps[L][1]),
            "ratio_to_smallest": med(steps[L][0]) / med(steps[base][0]),
            "cpu_ratio_to_smallest": med(steps[L][1]) / med(steps[base][1]),
            "phases_cpu_ms": ph, "bare_memory_cpu_ms": bm,
            "bare_memory_total_cpu_ms": sum(v for k, v in bm.items() if not k.startswith("(")),
            "steps": 2 * a.steps}))
    return recs


# --------------------------------------------------------------------------- report
def _fmt(x, nd=1):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def write_markdown(recs: list[dict], a) -> None:
    m = next(r for r in recs if r["kind"] == "machine")
    steps = [r for r in recs if r["kind"] == "step"]
    Ls = sorted({r["labels"] for r in steps})
    lines = ["# Step cost per sampler (benchmarks/step_cost.py)", "",
             f"Run {m['time']} on {m['cpu']}, {m['cores']} cores, {m['threads']} torch/faiss "
             f"thread(s), device {m['device']}; torch {m['torch']}, faiss {m['faiss']}, numpy "
             f"{m['numpy']}, Python {m['python']}; load average at start "
             f"{', '.join(f'{x:.1f}' for x in m['load_avg_start'])}.", "",
             f"Synthetic data: D = {FEATURES} features ({NNZ} non-zeros per row), {POSITIVES} "
             f"positives per row (power-law prior); mlp model d = {DIM}; B = {B}, R = {R}, "
             f"k = {K_MIX} (MIPS-s, top-uniform); K = sqrt(L), tau = {a.nprobe or 16}.  Medians over "
             f"{a.steps} timed rounds after {a.warmup} warm-up rounds; the samplers of one L are "
             f"interleaved within each round (order rotated), and each timed step follows "
             f"{a.settle} untimed step(s) of the same configuration (as steps follow each "
             f"other in training; without them a step starts with the caches full of another "
             f"configuration's matrices).  Wall-clock ms, CPU ms in "
             f"parentheses (CPU time is less affected by other jobs on a shared "
             f"machine).  The index refresh is not part of a step.", "",
             "## ms per step", "",
             "| sampler | " + " | ".join(f"L = {L:,}" for L in Ls) + " |",
             "|---|" + "---|" * len(Ls)]
    for s in a.samplers:
        cells = []
        for L in Ls:
            r = next((r for r in steps if r["sampler"] == s and r["labels"] == L), None)
            if r is None:
                cells.append("-")
            elif "skipped" in r:
                cells.append("skipped")
            else:
                cells.append(f"{_fmt(r['ms_per_step'])} ({_fmt(r['cpu_ms_per_step'])})")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "Distinct label rows touched per step (U, median): " + "; ".join(
        f"{r['sampler']} L={r['labels']:,}: {r['touched_rows']:,}" for r in steps
        if "touched_rows" in r and r["sampler"] in ("uniform", "mips-s")) + ".", ""]

    mips = [r for r in steps if r.get("search_ms") is not None]
    if mips:
        lines += ["## MIPS step vs its raw faiss search", "",
                  "| L | sampler | K | tau | step ms | search ms | step / search (CPU) |",
                  "|---|---|---|---|---|---|---|"]
        for r in mips:
            lines.append(f"| {r['labels']:,} | {r['sampler']} | {r['clusters']} | {r['nprobe']} | "
                         f"{_fmt(r['ms_per_step'])} | {_fmt(r['search_ms'])} | "
                         f"{_fmt(r['step_over_search'], 2)} ({_fmt(r['cpu_step_over_search'], 2)}) |")
        lines.append("")
    asm = [r for r in recs if r["kind"] == "assembly"]
    if asm:
        lines += ["## Candidate assembly: batched vs per-example loop (CPU ms)", "",
                  "| L | sampler (k) | batched | per-row loop | speed-up |", "|---|---|---|---|---|"]
        for r in asm:
            lines.append(f"| {r['labels']:,} | {r['sampler']} ({r['k']}) | "
                         f"{_fmt(r['vectorised_cpu_ms'], 2)} | {_fmt(r['loop_cpu_ms'], 1)} | "
                         f"{_fmt(r['speedup'], 0)}x |")
        lines.append("")
    ref = [r for r in recs if r["kind"] == "refresh"]
    if ref:
        lines += ["## Index refresh: cold build vs warm refresh (s)", "",
                  "| L | K | cold (k-means s, runs) | warm (k-means s, runs) | cold / warm |",
                  "|---|---|---|---|---|"]
        for r in ref:
            lines.append(f"| {r['labels']:,} | {r['clusters']} | {_fmt(r['cold_s'], 2)} "
                         f"({_fmt(r['cold_kmeans_s'], 2)}, {r['cold_runs']}) | "
                         f"{_fmt(r['warm_s'], 2)} ({_fmt(r['warm_kmeans_s'], 2)}, "
                         f"{r['warm_runs']}) | {_fmt(r['cold_over_warm'], 1)}x |")
        lines += ["", f"Cold: {ref[0]['cold_iterations']} k-means iterations from random "
                  f"labels; warm: {ref[0]['warm_iterations']} iteration(s) from the previous "
                  f"centroids after W trained for {a.warmup + a.steps} steps; both then "
                  f"rebuild the inverted lists.", ""]
    sc = [r for r in recs if r["kind"] == "uniform-scaling"]
    if sc:
        keys = list(sc[0]["phases_cpu_ms"])
        bkeys = list(sc[0]["bare_memory_cpu_ms"])
        lines += ["## Uniform step across L (interleaved across L)", "",
                  "| | " + " | ".join(f"L = {r['labels']:,}" for r in sc) + " |",
                  "|---|" + "---|" * len(sc),
                  "| step wall ms (ratio to smallest L) | " + " | ".join(
                      f"{_fmt(r['ms_per_step'])} ({_fmt(r['ratio_to_smallest'], 2)}x)" for r in sc) + " |",
                  "| step CPU ms (ratio) | " + " | ".join(
                      f"{_fmt(r['cpu_ms_per_step'])} ({_fmt(r['cpu_ratio_to_smallest'], 2)}x)"
                      for r in sc) + " |"]
        for k in keys:
            nd = 0 if k.startswith("touched") else 2
            lines.append(f"| phase: {k} | " + " | ".join(
                _fmt(r["phases_cpu_ms"][k], nd) for r in sc) + " |")
        for k in bkeys:
            lines.append(f"| bare: {k} | " + " | ".join(
                _fmt(r["bare_memory_cpu_ms"][k], 2) for r in sc) + " |")
        lines.append("| bare total, torch row aside (ratio) | " + " | ".join(
            f"{_fmt(r['bare_memory_total_cpu_ms'], 2)} "
            f"({_fmt(r['bare_memory_total_cpu_ms'] / sc[0]['bare_memory_total_cpu_ms'], 1)}x)"
            for r in sc) + " |")
        lines.append("")
    lines += ["## Target checks", ""] + target_checks(recs) + [""]
    # One heading level down: the table is a section of RESULTS.md.
    text = "\n".join("#" + l if l.startswith("#") else l for l in lines)
    replace_section(Path(a.markdown), "step_cost", text)


def replace_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``."""
    begin, end = f"<!-- {name}:begin (generated) -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old + ("\n" if old else "") + block + "\n"
    path.write_text(new)


def target_checks(recs: list[dict]) -> list[str]:
    out = []
    sc = {r["labels"]: r for r in recs if r["kind"] == "uniform-scaling"}
    if len(sc) > 1:
        lo, hi = min(sc), max(sc)
        r = sc[hi]
        ok = r["ratio_to_smallest"] <= 1.5
        out.append(f"- Uniform step at L = {hi:,} <= 1.5x the step at L = {lo:,}: "
                   f"**{'met' if ok else 'not met'}**, {r['ratio_to_smallest']:.2f}x wall "
                   f"({r['cpu_ratio_to_smallest']:.2f}x CPU).")
    ms = [r for r in recs if r["kind"] == "step" and r.get("sampler") == "mips-s"
          and r.get("search_ms")]
    if ms:
        r = max(ms, key=lambda r: r["labels"])
        ok = r["step_over_search"] <= 1.25
        out.append(f"- MIPS-s step <= 1.25x its raw faiss search (at the largest L, "
                   f"{r['labels']:,}): **{'met' if ok else 'not met'}**, "
                   f"{r['step_over_search']:.2f}x wall ({r['cpu_step_over_search']:.2f}x CPU); "
                   f"at every L: " + ", ".join(f"{q['labels']:,}: {q['step_over_search']:.2f}x"
                                                 for q in ms) + ".")
    asm = [r for r in recs if r["kind"] == "assembly" and r["sampler"] == "mips-s"]
    if asm:
        worst = min(asm, key=lambda r: r["speedup"])
        ok = worst["speedup"] >= 20
        out.append(f"- Batched MIPS-s candidate assembly (k from the search, R - k uniform) "
                   f">= 20x faster than the per-example loop: **{'met' if ok else 'not met'}**, "
                   f"slowest L {worst['speedup']:.0f}x (L = {worst['labels']:,}); all: " +
                   ", ".join(f"{r['labels']:,}: {r['speedup']:.0f}x" for r in asm) + ".")
    ref = [r for r in recs if r["kind"] == "refresh"]
    if ref:
        out.append("- Warm refresh timed against a cold build: " + ", ".join(
            f"L = {r['labels']:,}: {r['warm_s']:.2f} s vs {r['cold_s']:.2f} s "
            f"({r['cold_over_warm']:.1f}x)" for r in ref) + ".")
    return out


if __name__ == "__main__":
    run(parse(sys.argv[1:]))
