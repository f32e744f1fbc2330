"""Fit-time benchmark of the adversarial sampler's auxiliary model (a script, not a test).

    python benchmarks/adversarial_fit.py                       # 4K/40K, 64K/200K, 1M/1M
    python benchmarks/adversarial_fit.py --sizes 4096:40000 --threads 1
    python benchmarks/adversarial_fit.py --sizes 1000000:1000000 --device cuda

One JSON line per size (labels:rows).
Synthetic sparse data with label structure: every label owns ``topic``
feature ids; a row draws 1-3 labels (power-law frequencies), half of its
non-zeros from its labels' topics and the rest from the whole vocabulary,
TF-IDF-like positive values, rows L2-normalised.  Prints PCA and tree fit
times and the tree's training accuracy (argmax p_n on a few rows).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp
import torch

from xmcviz.samplers.adversarial.sampler import fit_adversarial_sampler


def synthetic(num_labels: int, num_rows: int, num_features: int = 20000, nnz: int = 40,
              topic: int = 10, max_labels: int = 3, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(X, Y) float32 CSR: sparse rows whose non-zeros depend on their labels."""
    rng = np.random.default_rng(seed)
    topics = rng.integers(0, num_features, size=(num_labels, topic))
    freq = 1.0 / np.arange(1, num_labels + 1) ** 0.7
    freq /= freq.sum()
    counts = rng.integers(1, max_labels + 1, size=num_rows)
    lab = rng.choice(num_labels, size=int(counts.sum()), p=freq)
    row_of = np.repeat(np.arange(num_rows), counts)
    Y = sp.csr_matrix((np.ones(lab.size, np.float32), (row_of, lab)), shape=(num_rows, num_labels))
    Y.sum_duplicates()
    Y.data[:] = 1.0
    first = lab[np.concatenate([[0], np.cumsum(counts)[:-1]])]  # topic features of the first label
    half = nnz // 2
    cols = np.concatenate([topics[first][np.arange(num_rows)[:, None], rng.integers(0, topic, (num_rows, half))],
                           rng.integers(0, num_features, (num_rows, nnz - half))], axis=1)
    vals = rng.exponential(1.0, size=cols.shape).astype(np.float32)
    X = sp.csr_matrix((vals.ravel(), cols.ravel(), np.arange(0, num_rows * nnz + 1, nnz)),
                      shape=(num_rows, num_features))
    X.sum_duplicates()
    norms = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
    X = sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ X, dtype=np.float32)
    X.sort_indices()
    return X, Y


def run_one(labels: int, rows: int, features: int, pairs: str, device: str) -> dict:
    """Generate, fit and time one size; returns the JSON record."""
    t = time.perf_counter()
    X, Y = synthetic(labels, rows, features)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    s = fit_adversarial_sampler(X, Y, 10, pairs=pairs, device=device)
    total_s = time.perf_counter() - t
    probe = np.arange(min(2000, rows))
    z = s.z_train[torch.as_tensor(probe, device=s.device)]
    chunk = max(1, 2 ** 27 // labels)  # keep [B, L] blocks at ~0.5 GB
    pred = torch.cat([s.tree.log_prob_all(z[i:i + chunk]).argmax(1) for i in range(0, len(probe), chunk)])
    Yr = Y[probe].tocsr()
    hit = np.asarray(Yr[np.arange(len(probe)), np.array(pred.cpu().numpy())]).ravel() > 0
    info = s.fit_info
    return {"labels": labels, "rows": rows, "nnz_X": int(X.nnz), "pairs": info["num_pairs"],
            "device": str(s.device), "threads": torch.get_num_threads(), "generate_s": round(gen_s, 2),
            "pca_s": round(info["pca_s"], 2), "tree_s": round(info["tree"]["fit_s"], 2),
            "total_s": round(total_s, 2), "max_rounds_used": max(l["rounds"] for l in info["tree"]["levels"]),
            "train_P@1_of_argmax_pn": float(hit.mean())}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096:40000,65536:200000,1000000:1000000",
                    help="comma-separated LABELS:ROWS")
    ap.add_argument("--features", type=int, default=20000)
    ap.add_argument("--pairs", default="all", choices=["all", "first"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = []
    for size in a.sizes.split(","):
        labels, rows = (int(v) for v in size.split(":"))
        out.append(run_one(labels, rows, a.features, a.pairs, a.device))
        print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    main()
