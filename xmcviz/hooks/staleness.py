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
from ..validation import check_int
from .base import StepContext
from .recording import FullScoringHook, interval_fields


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


class IndexStaleness(FullScoringHook):
    """Recall of the MIPS index against exact search under the current model."""

    name = "staleness"

    default_every = 10

    def __init__(self, every: int | None = None, probe: int = 50, k: int | None = None) -> None:
        super().__init__(every, probe)
        self.k = None if k is None else check_int("k", k, 1)
        self._snap_key: tuple | None = None
        self._snap: tuple[torch.Tensor, torch.Tensor | None] | None = None

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
        W_h, b_h = self._snapshot_on(index, emb.device)
        bias = getattr(ctx.model, "bias", None)
        bias = None if bias is None else bias.detach()
        _, approx = index.search(emb, k)
        _, exact_now = topk_labels(emb, ctx.model.W.detach(), k, bias=bias)
        _, exact_snap = topk_labels(emb, W_h, k, bias=b_h)
        rec = {"step": ctx.step, "epoch": ctx.epoch, **interval_fields(ctx), "k": k,
               "recall": float(overlap(approx, exact_now).float().mean()) / k,
               "overlap_snapshot": float(overlap(exact_snap, exact_now).float().mean()) / k,
               "ann_recall": float(overlap(approx, exact_snap).float().mean()) / k}
        self.emit(rec)

    def _snapshot_on(self, index: MipsIndex, device: torch.device):
        """The index's snapshot ``(W_h, b_h)`` on ``device``: copied once per refresh when the
        index lives elsewhere (faiss-cpu with a CUDA model), not at every logged step."""
        W_h, b_h = index.snapshot
        if W_h.device == device:
            return W_h, b_h
        key = (id(index), index.builds, W_h.data_ptr(), str(device))
        if key != self._snap_key:
            self._snap = None  # free the previous copy first
            self._snap = (W_h.to(device), None if b_h is None else b_h.to(device))
            self._snap_key = key
        return self._snap
