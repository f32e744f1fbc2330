"""Each fast path (xmcviz.core.fast) against the reference it replaces, on the step's shapes.

Shapes of ``step_cost.py``: B = 256 rows, 5 positives + R = 100 negatives (K = 105 scored
labels per row, 2 % of them masked), d = 128, MIPS-s with k = 5.  Per L, in one process, each
operation runs ``--repeats`` times with the fast paths on and inside ``fast.reference()``,
the two alternating (which goes first alternates too); medians of wall-clock and process CPU
ms (CPU time is less affected by other jobs on a shared machine).  Operations:

* ``score+backward``: ``XMCModel.score`` on the gathered labels and its backward (fused
  gather + score and the numba row gradient, against einsum over gathered rows);
* ``adam step``: ``RowSparseAdam.step`` on that gradient (numba one-pass step, against five
  torch passes);
* ``mips-s assembly``: ``assemble_negatives`` (numpy, against torch ops);
* ``uniform negatives``: ``uniform_excluding`` (numpy int32 count, against ``searchsorted``);
* ``first occurrence``: ``first_occurrence`` on ``[B, R]`` (numpy sort of composite keys,
  against a stable ``torch.sort``).

    python benchmarks/fast_paths.py [--labels 4096,1048576] [--repeats 30] [--out FILE]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from _jsonl import JsonLines  # benchmarks/ is on sys.path when a script runs
from xmcviz.core import fast
from xmcviz.core.models import XMCModel
from xmcviz.core.optim import RowSparseAdam
from xmcviz.samplers.base import Positives
from xmcviz.samplers.mips import assemble_negatives
from xmcviz.samplers.ops import first_occurrence, sorted_positive_table, uniform_excluding

B, P, R, K_MIPS, DIM = 256, 5, 100, 5, 128


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3


def compare(fn: Callable[[], object], repeats: int) -> dict:
    """Median wall / CPU ms of ``fn`` with the fast paths on and with the references."""
    times: dict[str, list[tuple[float, float]]] = {"fast": [], "reference": []}
    fn()  # compiles the kernels / warms the caches
    with fast.reference():
        fn()
    for r in range(repeats):
        for mode in (("fast", "reference") if r % 2 == 0 else ("reference", "fast")):
            if mode == "fast":
                times[mode].append(_time(fn))
            else:
                with fast.reference():
                    times[mode].append(_time(fn))
    out = {}
    for mode, t in times.items():
        out[f"{mode}_ms"] = round(statistics.median(x[0] for x in t), 3)
        out[f"{mode}_cpu_ms"] = round(statistics.median(x[1] for x in t), 3)
    out["speedup_cpu"] = round(out["reference_cpu_ms"] / max(out["fast_cpu_ms"], 1e-9), 2)
    return out


def operations(L: int, seed: int = 0) -> dict[str, Callable[[], object]]:
    """The timed operations at ``L`` labels, on fixed random inputs."""
    g = torch.Generator().manual_seed(seed)
    model = XMCModel(nn.Identity(), L, DIM)
    opt = RowSparseAdam([model.W], lr=1e-3)
    ids = torch.randint(0, L, (B, P + R), generator=g)
    mask = torch.rand(B, P + R, generator=g) > 0.02
    emb = torch.randn(B, DIM, generator=g, requires_grad=True)
    weights = torch.randn(B, P + R, generator=g)

    def score_backward() -> None:
        model.W.grad = None
        (model.score(emb, ids, mask=mask) * weights).sum().backward()

    score_backward()
    grad = model.W.grad.coalesce()

    def adam_step() -> None:
        model.W.grad = grad
        opt.step()

    pos = Positives(ids[:, :P].contiguous(), torch.ones(B, P, dtype=torch.bool))
    table, _ = sorted_positive_table(pos)
    rng = np.random.default_rng(seed)
    cand = torch.as_tensor(rng.integers(0, L, size=(B, K_MIPS + P)))
    draws = torch.Generator()
    negs = torch.randint(0, L, (B, R), generator=g)
    valid = torch.rand(B, R, generator=g) < 0.95
    return {
        "score+backward": score_backward,
        "adam step": adam_step,
        "mips-s assembly": lambda: assemble_negatives(cand, pos, K_MIPS, R, L,
                                                      draws.manual_seed(1), table=table),
        "uniform negatives": lambda: uniform_excluding(pos, L, R, draws.manual_seed(2),
                                                       table=table),
        "first occurrence": lambda: first_occurrence(negs, valid),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default="4096,1048576")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the JSON lines to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    records = []
    with JsonLines(args.out) as out:
        for L in [int(x) for x in args.labels.split(",")]:
            for name, fn in operations(L).items():
                rec = {"labels": L, "operation": name, "threads": args.threads}
                rec.update(compare(fn, args.repeats))
                records.append(out.emit(rec))
    return records


if __name__ == "__main__":
    main()
