"""NegativeRanks: the true rank of every negative that enters the loss.

For the probe rows of a batch, each sampled negative's rank among all L labels
under the *current* model (1 = highest score) is computed exactly — full
scores for the probe rows only, chunked over labels (``xmcviz.core.topk``).  This is
what shows MIPS-a's negatives drifting to easy ranks as its index goes stale
(see docs/background.md, section "Rank drift").

Files: ``hooks/ranks.jsonl`` (one summary per logged step: median rank by
source) and ``hooks/ranks.bin`` (one record per negative, dtype ``RANK_DTYPE``).
"""
from __future__ import annotations

import numpy as np
import torch

from ..samplers.base import SOURCE_NAMES
from ..core.topk import true_ranks
from .base import StepContext
from .recording import FullScoringHook, interval_fields, to_numpy

RANK_DTYPE = np.dtype([("step", "<i8"), ("epoch", "<i4"), ("steps_since_refresh", "<i4"),
                       ("refresh_interval", "<i4"), ("row", "<i4"), ("label", "<i4"),
                       ("source", "u1"), ("rank", "<i4")])


class NegativeRanks(FullScoringHook):
    """Log true ranks of the negatives of ``probe`` rows every ``every`` steps."""

    name = "ranks"
    record_dtypes = {"": RANK_DTYPE}

    default_every = 20

    def __init__(self, every: int | None = None, probe: int = 50, label_chunk: int = 65536) -> None:
        super().__init__(every, probe)
        self.label_chunk = label_chunk

    @torch.no_grad()
    def before_update(self, ctx: StepContext) -> None:
        p = self.probe_rows(ctx.emb.shape[0])
        neg = ctx.negatives
        mask = neg.mask[p]
        if not bool(mask.any()):
            return
        bias = getattr(ctx.model, "bias", None)
        ranks = true_ranks(ctx.emb[p], ctx.model.W.detach(), neg.ids[p],
                           bias=None if bias is None else bias.detach(), label_chunk=self.label_chunk)
        r_idx, c_idx = mask.nonzero(as_tuple=True)
        n = int(r_idx.numel())
        itv = interval_fields(ctx)
        rec = np.zeros(n, dtype=RANK_DTYPE)
        rec["step"] = ctx.step
        rec["epoch"] = ctx.epoch
        rec["steps_since_refresh"] = itv["steps_since_refresh"]
        rec["refresh_interval"] = itv["refresh_interval"]
        rec["row"] = to_numpy(ctx.rows[p][r_idx])
        rec["label"] = to_numpy(neg.ids[p][r_idx, c_idx])
        rec["source"] = to_numpy(neg.source[p][r_idx, c_idx])
        rec["rank"] = to_numpy(ranks[r_idx, c_idx])
        summary = {"step": ctx.step, "epoch": ctx.epoch, **itv, "count": n,
                   "median_rank": float(np.median(rec["rank"]))}
        for code in np.unique(rec["source"]):
            summary[f"median_rank_{SOURCE_NAMES[code]}"] = float(np.median(rec["rank"][rec["source"] == code]))
        self.emit(summary, {"": rec})
