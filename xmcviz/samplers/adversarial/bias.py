"""Bias removal at prediction time: rank labels by ``score + log p_n(y|x)``.

A model trained with negatives drawn from p_n learns (at the optimum of the
negative-sampling loss) ``score = log p(y|x) - log p_n(y|x)`` up to a per-row
constant, so the unbiased ranking adds ``log p_n(y|x)`` back (Bamler & Mandt,
ICLR 2020; docs/background.md, section "Bias removal").  Used by :meth:`xmcviz.core.trainer.Trainer.evaluate`
for any sampler that provides ``log_pn_all``.
"""
from __future__ import annotations

from typing import Callable

import scipy.sparse as sp
import torch

from ...validation import check_int

#: Elements of one [rows, L] score block (float32: 64 MB).
BLOCK_ELEMS = 1 << 24


def find_log_pn_all(sampler) -> Callable | None:
    """The ``log_pn_all(X_rows) -> [n, L]`` of ``sampler`` or of a wrapped inner sampler
    (e.g. :class:`~xmcviz.samplers.WarmupSampler`), else None (no bias to remove)."""
    for s in (sampler, getattr(sampler, "inner", None)):  # WarmupSampler is the only wrapper
        fn = getattr(s, "log_pn_all", None)
        if callable(fn):
            return fn
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
    rows = _score_rows(row_batch, L)
    X = sp.csr_matrix(X)
    out = [_debiased_block(embed(X[s:s + rows]), X[s:s + rows], W, bias, log_pn_all, k)
           for s in range(0, X.shape[0], rows)]
    return torch.cat(out) if out else torch.empty((0, k), dtype=torch.int64, device=W.device)


@torch.no_grad()
def raw_and_debiased_topk(embed: Callable[[sp.csr_matrix], torch.Tensor], X: sp.csr_matrix,
                          W: torch.Tensor, log_pn_all: Callable[[sp.csr_matrix], torch.Tensor],
                          k: int, *, bias: torch.Tensor | None = None, row_batch: int = 1024
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(raw, debiased)`` top-``k`` ids [N, k] in one pass over the rows: each row block is
    embedded once.

    ``raw`` ranks ``embed(X) @ W.T + bias`` with :func:`xmcviz.core.topk.topk_labels`, as
    :func:`xmcviz.core.evaluate.predict_topk` does (same order and ties); ``debiased`` equals
    :func:`debiased_topk` (same [rows, L] blocks).  Rows are embedded ``row_batch`` at a time,
    rounded down to whole score blocks.
    """
    from ...core.topk import topk_labels
    L = int(W.shape[0])
    k = check_int("k", k, 1, L)
    rows = _score_rows(row_batch, L)
    outer = rows * max(1, row_batch // rows)  # embedding blocks: whole score blocks
    if bias is not None and tuple(bias.shape) != (L,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}: expected ({L},)")
    X = sp.csr_matrix(X)
    raw, adj = [], []
    for s in range(0, X.shape[0], outer):
        emb = embed(X[s:s + outer])
        if emb.dim() != 2 or emb.shape[1] != W.shape[1]:
            raise ValueError(f"embedding batch has shape {tuple(emb.shape)}: expected [b, "
                             f"{W.shape[1]}] to match W {tuple(W.shape)}")
        raw.append(topk_labels(emb.to(device=W.device, dtype=W.dtype), W, k, bias=bias)[1])
        for i in range(0, emb.shape[0], rows):
            Xb = X[s + i:s + i + rows]
            adj.append(_debiased_block(emb[i:i + rows], Xb, W, bias, log_pn_all, k))
    if not raw:
        empty = torch.empty((0, k), dtype=torch.int64, device=W.device)
        return empty, empty.clone()
    return torch.cat(raw), torch.cat(adj)


def _score_rows(row_batch: int, num_labels: int) -> int:
    """Rows of one [rows, L] score block: at most ``row_batch`` and ``BLOCK_ELEMS // L``."""
    return max(1, min(check_int("row_batch", row_batch, 1), BLOCK_ELEMS // max(num_labels, 1)))


def _debiased_block(emb: torch.Tensor, Xb: sp.csr_matrix, W: torch.Tensor, bias: torch.Tensor | None,
                    log_pn_all: Callable[[sp.csr_matrix], torch.Tensor], k: int) -> torch.Tensor:
    """Top-``k`` ids of ``emb @ W.T + bias + log p_n(.|Xb)`` for one row block."""
    scores = emb @ W.T
    if bias is not None:
        scores = scores + bias
    scores = scores + log_pn_all(Xb).to(scores.device, scores.dtype)
    return torch.topk(scores, k, dim=1).indices
