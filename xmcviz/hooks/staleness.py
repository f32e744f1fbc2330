"""IndexStaleness: how far the MIPS index's answers drift from the live model.

Between refreshes the index holds a snapshot W^h while W keeps moving.  For
the probe rows, every ``every`` steps, three top-k lists are compared:

* ``approx``: what the index returns (approximate search over W^h);
* ``exact_now``: the exact top-k under the current W;
* ``exact_snap``: the exact top-k under the snapshot W^h.

Logged (means over the probe): ``recall`` = |approx ∩ exact_now| / k (what the
sampler actually gets), ``overlap_snapshot`` = |exact_snap ∩ exact_now| / k (pure
staleness) and ``ann_recall`` = |approx ∩ exact_snap| / k (pure approximation
error), against ``steps_since_refresh``.  File: ``hooks/staleness.jsonl``.
Steps where no MIPS index is built (warm-up, other samplers) log nothing.
"""
from __future__ import annotations

import torch

from ..samplers.faiss_index import MipsIndex
from ..core.topk import topk_labels
from .base import StepContext
from .recording import RecordingHook, interval_fields


def find_index(sampler) -> MipsIndex | None:
    """The built MIPS index of ``sampler`` (looking through wrappers), or None."""
    for s in (sampler, getattr(sampler, "inner", None)):
        idx = getattr(s, "index", None)
        if isinstance(idx, MipsIndex) and idx.is_built:
            return idx
    return None


def overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, |a ∩ b| for id lists [B, k] (entries < 0 are empty slots)."""
    hit = (a.unsqueeze(2) == b.unsqueeze(1)) & (a.unsqueeze(2) >= 0)
    return hit.any(dim=2).sum(dim=1)


class IndexStaleness(RecordingHook):
    """Recall of the MIPS index against exact search under the current model."""

    name = "staleness"

    def __init__(self, every: int = 10, probe: int = 50, k: int | None = None) -> None:
        super().__init__(every, probe)
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k={k!r} is out of range: allowed integers >= 1")
        self.k = k

    @torch.no_grad()
    def before_update(self, ctx: StepContext) -> None:
        index = find_index(ctx.sampler)
        if index is None:
            return
        inner = getattr(ctx.sampler, "inner", ctx.sampler)
        k = self.k or getattr(inner, "k", None) or 10
        k = min(k, index.num_labels)
        p = self.probe_rows(ctx.emb.shape[0])
        emb = ctx.emb[p]
        W_h, b_h = index.snapshot
        bias = getattr(ctx.model, "bias", None)
        bias = None if bias is None else bias.detach()
        _, approx = index.search(emb, k)
        _, exact_now = topk_labels(emb, ctx.model.W.detach(), k, bias=bias)
        _, exact_snap = topk_labels(emb, W_h.to(emb.device), k, bias=None if b_h is None else b_h.to(emb.device))
        rec = {"step": ctx.step, "epoch": ctx.epoch, **interval_fields(ctx), "k": k,
               "recall": float(overlap(approx, exact_now).float().mean()) / k,
               "overlap_snapshot": float(overlap(exact_snap, exact_now).float().mean()) / k,
               "ann_recall": float(overlap(approx, exact_snap).float().mean()) / k}
        self.emit(rec)
