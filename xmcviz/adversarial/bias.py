"""Bias removal at prediction time: rank labels by ``score + log p_n(y|x)``.

A model trained with negatives drawn from p_n learns (at the optimum of the
negative-sampling loss) ``score = log p(y|x) - log p_n(y|x)`` up to a per-row
constant, so the unbiased ranking adds ``log p_n(y|x)`` back (Bamler & Mandt,
ICLR 2020; SPEC section 4).  Used by :meth:`xmcviz.trainer.Trainer.evaluate`
for any sampler that provides ``log_pn_all``.
"""
from __future__ import annotations

from typing import Callable

import scipy.sparse as sp
import torch

from ..validation import check_int

#: Elements of one [rows, L] score block (float32: 64 MB).
BLOCK_ELEMS = 1 << 24


def find_log_pn_all(sampler) -> Callable | None:
    """The ``log_pn_all(X_rows) -> [n, L]`` of ``sampler`` or of a wrapped inner sampler
    (e.g. :class:`~xmcviz.samplers.WarmupSampler`), else None (no bias to remove)."""
    seen = 0
    while sampler is not None and seen < 8:  # wrappers nest a few levels at most
        fn = getattr(sampler, "log_pn_all", None)
        if callable(fn):
            return fn
        sampler, seen = getattr(sampler, "inner", None), seen + 1
    return None


@torch.no_grad()
def debiased_topk(embed: Callable[[sp.csr_matrix], torch.Tensor], X: sp.csr_matrix, W: torch.Tensor,
                  log_pn_all: Callable[[sp.csr_matrix], torch.Tensor], k: int, *,
                  bias: torch.Tensor | None = None, row_batch: int = 1024) -> torch.Tensor:
    """Top-``k`` label ids (int64 [N, k], best first) of ``embed(X) @ W.T + bias + log p_n``.

    Streams row batches of at most ``min(row_batch, BLOCK_ELEMS // L)`` rows, so only one
    [rows, L] score block exists at a time.  ``embed`` maps a CSR row block to embeddings
    [rows, d] on ``W``'s device; ``log_pn_all`` maps it to log p_n [rows, L].
    """
    L = int(W.shape[0])
    k = check_int("k", k, 1, L)
    rows = max(1, min(check_int("row_batch", row_batch, 1), BLOCK_ELEMS // max(L, 1)))
    X = sp.csr_matrix(X)
    out = []
    for s in range(0, X.shape[0], rows):
        Xb = X[s:s + rows]
        scores = embed(Xb) @ W.T
        if bias is not None:
            scores = scores + bias
        scores = scores + log_pn_all(Xb).to(scores.device, scores.dtype)
        out.append(torch.topk(scores, k, dim=1).indices)
    if not out:
        return torch.empty((0, k), dtype=torch.int64, device=W.device)
    return torch.cat(out)
