"""Exact top-k over all labels, batched so the full score matrix never exists.

Used by the ``top`` sampler, by evaluation and by the rank instruments.  Scores
are ``emb @ W.T (+ bias)``; labels are processed in chunks of ``label_chunk``
and a running top-k is merged, so memory is O(B * (k + label_chunk)).
:func:`label_chunk_for` picks the chunk that keeps one score block near a fixed size
whatever the batch, so memory stays bounded at any L.
"""
from __future__ import annotations

import torch

from ..validation import check_int

# Scores in one [rows, label_chunk] block: 16M float32 = 64 MB (plus topk's workspace).
BLOCK_ELEMENTS = 1 << 24


def label_chunk_for(rows: int, max_elements: int = BLOCK_ELEMENTS) -> int:
    """Labels per chunk so that a [rows, chunk] score block holds about ``max_elements``
    (at least 1024 labels, so a chunk is never too thin for a matrix product to be efficient)."""
    rows = check_int("rows", rows, 1)
    return max(1024, check_int("max_elements", max_elements, 1) // rows)


def topk_labels(emb: torch.Tensor, W: torch.Tensor, k: int, *, bias: torch.Tensor | None = None,
                exclude: torch.Tensor | None = None, exclude_mask: torch.Tensor | None = None,
                label_chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(scores, ids)``, each [B, k], of the k highest-scoring labels per row.

    ``exclude`` (int64 [B, P]) lists label ids to skip per row (e.g. the
    positives), with ``exclude_mask`` (bool [B, P]) marking which entries are
    real.  The result is ordered by score, then label id; which of several
    labels tied exactly at the k-th score gets in is unspecified (as with
    ``torch.topk``), which only matters for degenerate models (e.g. W = 0).
    """
    B, L = emb.shape[0], W.shape[0]
    if not 1 <= k <= L:
        raise ValueError(f"k={k} is out of range: allowed [1, {L}]")
    best_s = emb.new_full((B, 0), float("-inf"))
    best_i = torch.empty((B, 0), dtype=torch.int64, device=emb.device)
    for start in range(0, L, label_chunk):
        stop = min(start + label_chunk, L)
        s = emb @ W[start:stop].T
        if bias is not None:
            s = s + bias[start:stop]
        if exclude is not None:
            s = _mask_excluded(s, exclude, exclude_mask, start, stop)
        kk = min(k, stop - start)
        cs, ci = torch.topk(s, kk, dim=1, sorted=False)
        best_s = torch.cat([best_s, cs], 1)
        best_i = torch.cat([best_i, ci + start], 1)
        if best_s.shape[1] > k:
            best_s, sel = torch.topk(best_s, k, dim=1, sorted=False)
            best_i = best_i.gather(1, sel)
    # Sort by score desc, then id asc, for a deterministic order.
    order = torch.argsort(best_i, dim=1)
    best_s, best_i = best_s.gather(1, order), best_i.gather(1, order)
    order = torch.argsort(best_s, dim=1, descending=True, stable=True)
    return best_s.gather(1, order), best_i.gather(1, order)


def _mask_excluded(s: torch.Tensor, exclude: torch.Tensor, mask: torch.Tensor | None,
                   start: int, stop: int) -> torch.Tensor:
    inside = (exclude >= start) & (exclude < stop)
    if mask is not None:
        inside &= mask
    if not bool(inside.any()):
        return s
    r, c = inside.nonzero(as_tuple=True)
    s = s.clone()
    s[r, exclude[r, c] - start] = float("-inf")
    return s


def true_ranks(emb: torch.Tensor, W: torch.Tensor, ids: torch.Tensor, *,
               bias: torch.Tensor | None = None, label_chunk: int = 65536) -> torch.Tensor:
    """Rank (1 = highest score among all L labels) of the labels ``ids`` ([B, K]).

    A label's rank is 1 + the number of labels with a strictly higher score
    (ties share the best rank).  The target scores are read from the same
    matrix products that are compared against (a separate product could differ
    in the last bit and miscount a label against itself), so with more than one
    label chunk the scores are computed twice.
    """
    L = W.shape[0]

    def chunk_scores(start: int) -> torch.Tensor:
        s = emb @ W[start:start + label_chunk].T
        return s if bias is None else s + bias[start:start + label_chunk]

    target = emb.new_empty(ids.shape)
    for start in range(0, L, label_chunk):
        s = chunk_scores(start)
        inside = (ids >= start) & (ids < start + s.shape[1])
        local = torch.where(inside, ids - start, 0)
        target = torch.where(inside, s.gather(1, local), target)
        if start == 0 and s.shape[1] == L:  # one chunk: count now
            return _count_higher(s, target) + 1
    higher = torch.zeros(ids.shape, dtype=torch.int64, device=emb.device)
    for start in range(0, L, label_chunk):
        higher += _count_higher(chunk_scores(start), target)
    return higher + 1


def _count_higher(s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, how many entries of ``s`` [B, n] exceed each ``target`` [B, K].

    Each score is placed among the row's K sorted targets (O(n log K), not a sort of the n
    scores): a score above p targets counts for those p, so the count of a target is the
    number of scores placed above it, a suffix sum of the placements."""
    t_sorted, order = torch.sort(target, dim=1)
    above = torch.searchsorted(t_sorted, s.contiguous())     # targets strictly below each score
    hist = torch.zeros(s.shape[0], target.shape[1] + 1, dtype=torch.int64, device=s.device)
    hist.scatter_add_(1, above, torch.ones_like(above))
    higher = hist.flip(1).cumsum(1).flip(1)[:, 1:]          # scores above sorted target j
    return torch.empty_like(higher).scatter_(1, order, higher)
