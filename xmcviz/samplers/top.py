"""Exact top-R negatives under the live model (exhaustive; the reference for MIPS)."""
from __future__ import annotations

import torch

from ..core.topk import topk_labels
from .base import SOURCE_EXACT, Negatives, NegativeSampler, Positives
from .ops import positives_on


def exact_hardest(emb: torch.Tensor, positives: Positives, W: torch.Tensor | None,
                  bias: torch.Tensor | None, k: int, label_chunk: int = 65536
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest-scoring non-positive labels per row and their validity.

    Returns ``(ids, ok)``, [B, k] each, ordered by score (ties: smaller id).
    ``ok`` is False only where the row has fewer than k negatives (those slots
    would be positives scored -inf by the exclusion)."""
    if W is None:
        raise ValueError("this sampler scores every label: pass W= (the live [L, d] label "
                         "weights, detached) to sample()")
    pos = positives_on(positives, emb.device)
    scores, ids = topk_labels(emb, W, k, bias=bias, exclude=pos.ids, exclude_mask=pos.mask,
                              label_chunk=label_chunk)
    return ids, torch.isfinite(scores)


class TopSampler(NegativeSampler):
    """The R hardest negatives per row, by exhaustive scoring of the live model.

    Pure torch (chunked matmul + running top-k, :func:`xmcviz.core.topk.topk_labels`),
    O(B L d) per step: the exact counterpart of MIPS-a without staleness or
    approximation.  Needs ``W`` (and ``bias``, if the model has one) in
    :meth:`sample`; nothing to refresh.
    """

    name = "top"
    needs_model = True

    def __init__(self, num_labels: int, num_negatives: int, *, label_chunk: int = 65536) -> None:
        super().__init__(num_labels, num_negatives)
        self.label_chunk = int(label_chunk)

    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Negatives:
        ids, ok = exact_hardest(emb, positives, W, bias, self.num_negatives, self.label_chunk)
        source = torch.full(ids.shape, SOURCE_EXACT, dtype=torch.uint8, device=emb.device)
        return Negatives(ids, ok, source)
