"""The label matrix's row gradient on the CPU: numba kernel versus torch's sparse product.

Times ``xmcviz.core.fast.score._row_gradient`` (the backward of a scored batch: the coalesced
sparse gradient of W) on the step benchmark's shapes, B = 256 rows of K = 105 scored labels
(5 positives + R = 100 negatives), d = 128, 2 % of the entries masked, ids uniform in
[0, L), once with the numba kernel (``xmcviz.core.fast.cpu_kernels.row_sums``) and once with torch's
path (``XMCVIZ_NUMBA=0``).  Prints one JSON line per L with the median ms of each and the
distinct rows U.

    python benchmarks/row_gradient.py                  # L = 4K, 64K, 1M; 50 repeats
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz.core.fast.score import _row_gradient

B, K, DIM = 256, 105, 128


def median_ms(fn, repeats: int) -> float:
    fn()  # compiles / warms up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="4096,65536,1048576")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    records = []
    with JsonLines(args.out) as out:
        for L in [int(x) for x in args.labels.split(",")]:
            ids = torch.randint(0, L, (B, K), generator=g)
            grad, emb = torch.randn(B, K, generator=g), torch.randn(B, DIM, generator=g)
            live = torch.rand(B, K, generator=g) > 0.02
            rec = {"labels": L, "threads": args.threads}
            for path, flag in (("kernel_ms", "1"), ("torch_ms", "0")):
                os.environ["XMCVIZ_NUMBA"] = flag
                rec[path] = round(median_ms(
                    lambda: _row_gradient(ids, grad, emb, live, torch.Size([L, DIM])),
                    args.repeats), 3)
            os.environ.pop("XMCVIZ_NUMBA")
            rec["touched_rows"] = int(_row_gradient(ids, grad, emb, live,
                                                    torch.Size([L, DIM]))._nnz())
            rec["speedup"] = round(rec["torch_ms"] / rec["kernel_ms"], 1)
            records.append(out.emit(rec))
    return records


if __name__ == "__main__":
    main()
