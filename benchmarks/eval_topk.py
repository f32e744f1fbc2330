"""Time and memory of the exact top-k used by evaluation at a large label count (prints JSON).

Times :func:`xmcviz.core.evaluate.predict_topk` (``E @ W.T`` streamed over row batches and
label chunks, a running top-k merged per chunk) on random embeddings ``E`` [rows, d] and label
rows ``W`` [L, d], as ``Trainer.evaluate`` calls it (rows in batches of ``--row-batch``, the
label chunk from ``label_chunk_for``).  Reports seconds in all and per 1,000 rows, the
extrapolation to ``--full-rows`` test rows (Amazon-670K has 153,025), and the growth of the
process's peak RSS during the call, which the chunking keeps bounded whatever L is.

    python benchmarks/eval_topk.py                       # L = 670,091, d = 128, 2,000 rows
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz.core.evaluate import predict_topk
from xmcviz.core.topk import label_chunk_for


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=int, default=670091)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--row-batch", type=int, default=1024, help="as TrainConfig.eval_batch_size")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--full-rows", type=int, default=153025)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also append the JSON line to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(args.labels, args.dim, generator=g).to(dev)
    E = torch.randn(args.rows, args.dim, generator=g).to(dev)
    predict_topk(E[:8], W, args.k, row_batch=8)  # one-off costs (allocator, threads)
    rss0 = peak_rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    predict_topk(E, W, args.k, row_batch=args.row_batch)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_1k = wall / args.rows * 1000
    rec = {"labels": args.labels, "dim": args.dim, "rows": args.rows, "row_batch": args.row_batch,
           "label_chunk": label_chunk_for(args.row_batch), "k": args.k, "device": str(dev),
           "threads": args.threads, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
           "seconds_per_1000_rows": round(per_1k, 2),
           "cpu_seconds_per_1000_rows": round(cpu / args.rows * 1000, 2),
           f"extrapolated_seconds_{args.full_rows}_rows": round(per_1k * args.full_rows / 1000),
           "W_mb": round(W.numel() * 4 / 2**20), "peak_rss_growth_mb": round(peak_rss_mb() - rss0)}
    with JsonLines(args.out, "a") as out:
        return out.emit(rec)


if __name__ == "__main__":
    main()
