"""Batched building blocks shared by the samplers.

Everything here works on whole batches ([B, ...] tensors) on any device, with
no Python loop over rows.  The central trick is a per-row *sorted positive
table*: the row's positive ids sorted ascending and padded on the right with a
sentinel larger than any label id, so that batched ``torch.searchsorted``
answers "is this id a positive?" and "how many positives lie below?" in
O(log P) per query, whatever the number of positives P.

These torch versions are the reference.  On the CPU, :func:`sorted_positive_table`,
:func:`nth_negative` and :func:`first_occurrence` take numpy versions of the same steps
(:mod:`xmcviz.core.fast.sampling`) when the fast paths are on
(:func:`xmcviz.core.fast.enabled`); they give identical results.
"""
from __future__ import annotations

import torch

from ..core import fast
from ..core.fast.sampling import (BROADCAST_MAX, first_occurrence_np, nth_negative_narrow,
                                  sorted_positive_table_np)
from .base import Positives

# Drawing integers as (random 62-bit) mod n has a bias of at most n / 2**62,
# far below anything a frequency check can see, and works for any per-row n.
_RAND_HIGH = 2 ** 62
# Padding of a sorted positive table: above every label id and every candidate.
PAD = torch.iinfo(torch.int64).max


def sorted_positive_table(positives: Positives) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the distinct positive ids sorted ascending, padded with :data:`PAD`.

    Returns ``(table, count)``: ``table`` int64 [B, max(P, 1)] and ``count``
    int64 [B], the number of distinct real positives per row.  Duplicated
    positive ids within a row are counted once.
    """
    ids, mask = positives.ids, positives.mask
    B = ids.shape[0]
    if ids.shape[1] == 0:
        ids = torch.zeros((B, 1), dtype=torch.int64, device=ids.device)
        mask = torch.zeros((B, 1), dtype=torch.bool, device=ids.device)
    if fast.enabled() and ids.device.type == "cpu":
        t = torch.from_numpy(sorted_positive_table_np(ids.numpy(), mask.numpy(), PAD))
        return t, (t != PAD).sum(dim=1)
    t = torch.where(mask, ids, PAD)
    t, _ = torch.sort(t, dim=1)
    # A repeat of the previous entry is a duplicate: turn it into padding.
    dup = torch.zeros_like(mask)
    dup[:, 1:] = t[:, 1:] == t[:, :-1]
    t = torch.where(dup, PAD, t)
    t, _ = torch.sort(t, dim=1)
    count = (t != PAD).sum(dim=1)
    return t.contiguous(), count


def is_member(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """bool [B, n]: whether ``ids`` [B, n] occurs in the row's sorted ``table`` [B, P].

    Ids that are not labels (e.g. faiss's -1) are never members."""
    pos = torch.searchsorted(table, ids.contiguous())
    found = table.gather(1, pos.clamp_max(table.shape[1] - 1))
    return (found == ids) & (pos < table.shape[1])




def uniform_excluding(positives: Positives, num_labels: int, n: int,
                      generator: torch.Generator | None = None,
                      device: torch.device | None = None,
                      table: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labels per row uniformly from the row's negatives, with replacement.

    Exact uniform over the complement of the positives: draw v in
    [0, L - m) (m = the row's number of positives) and map it to the v-th
    negative label, v + #{k : p_(k) - k <= v} with p_(0) < p_(1) < ... the
    sorted positives (p_(k) - k negatives lie below p_(k)).  Cost
    O(B n log P).

    Returns ``(ids, ok)``, int64 and bool [B, n]; ``ok`` is False only in a
    row whose every label is positive (its ids are then 0, to be masked).
    ``table``: the rows' :func:`sorted_positive_table` when the caller already has it.
    """
    device = positives.ids.device if device is None else device
    if table is None:
        table, _ = sorted_positive_table(positives)
    table = table.to(device)
    count = (table != PAD).sum(dim=1)
    B = table.shape[0]
    free = (num_labels - count).clamp_min(1)  # number of negatives in the row
    v = raw_draws(B, n, generator, device) % free[:, None]
    ids = nth_negative(table, v)
    ok = (count < num_labels)[:, None].expand(B, n)
    return torch.where(ok, ids, 0), ok.clone()


def raw_draws(B: int, n: int, generator: torch.Generator | None = None,
              device: torch.device | None = None) -> torch.Tensor:
    """int64 [B, n] uniform in [0, 2^62): the draws :func:`uniform_excluding` reduces modulo
    each row's number of negatives.  One ``torch.randint`` from ``generator``, so a caller
    that draws through here consumes the generator as :func:`uniform_excluding` does."""
    return torch.randint(0, _RAND_HIGH, (B, n), generator=generator, device=device)


def nth_negative(table: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The ``v``-th (0-based) non-positive label of each row, for ``v`` [B, n] in [0, L - m).

    ``table`` is the row's :func:`sorted_positive_table`.  The k-th smallest
    positive p_(k) has p_(k) - k negatives below it, so the v-th negative is
    v + #{k : p_(k) - k <= v}; p_(k) - k is non-decreasing, hence a binary search."""
    shifted = table - torch.arange(table.shape[1], device=table.device)
    shifted = torch.where(table != PAD, shifted, PAD)  # padding: never counted
    if fast.enabled() and table.shape[1] <= BROADCAST_MAX:
        return nth_negative_narrow(shifted, v)
    return v + torch.searchsorted(shifted.contiguous(), v.contiguous(), right=True)


def first_occurrence(ids: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """bool [B, n]: True for the first (leftmost) valid occurrence of each id in its row.

    Entries with ``valid`` False are ignored (never keep, never shadow a later
    valid entry).  Vectorised: sort each row by (id, position), compare
    neighbours, scatter back."""
    B, n = ids.shape
    if valid is None:
        valid = torch.ones_like(ids, dtype=torch.bool)
    if n == 0 or B == 0:
        return valid.clone()
    if fast.enabled() and ids.device.type == "cpu":
        return torch.from_numpy(first_occurrence_np(ids.numpy(), valid.numpy()))
    pos = torch.arange(n, device=ids.device).expand(B, n)
    keys = torch.where(valid, ids, -1 - pos)  # invalid entries: distinct, never equal
    sorted_keys, order = torch.sort(keys, dim=1, stable=True)
    first_sorted = torch.ones_like(valid)
    first_sorted[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    first = torch.empty_like(valid).scatter_(1, order, first_sorted)
    return first & valid


def first_k_valid(ids: torch.Tensor, valid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per row, the first ``k`` entries of ``ids`` [B, n] where ``valid``, in order.

    Returns ``(out, filled)``: int64 and bool [B, k].  Rows with fewer than k
    valid entries have ``filled`` False in their last slots (ids 0 there)."""
    B = ids.shape[0]
    rank = torch.cumsum(valid.to(torch.int64), dim=1) - 1
    keep = valid & (rank < k)
    # Entries not kept go to a dump column k, dropped afterwards.
    slot = torch.where(keep, rank, k)
    out = torch.zeros((B, k + 1), dtype=torch.int64, device=ids.device)
    out.scatter_(1, slot, torch.where(keep, ids, 0))
    filled = torch.zeros((B, k + 1), dtype=torch.bool, device=ids.device)
    filled.scatter_(1, slot, keep)
    return out[:, :k].contiguous(), filled[:, :k].contiguous()


def positive_mask_dense(positives: Positives, num_labels: int) -> torch.Tensor:
    """bool [B, L]: True where the label is a positive of the row."""
    B = positives.ids.shape[0]
    dense = torch.zeros((B, num_labels + 1), dtype=torch.bool, device=positives.ids.device)
    # Padding goes to the dump column L so it can't collide with a real id.
    idx = torch.where(positives.mask, positives.ids, num_labels)
    dense.scatter_(1, idx, True)
    return dense[:, :num_labels]


def positives_on(positives: Positives, device: torch.device) -> Positives:
    """The positives on ``device`` (returned as is when they already are)."""
    if positives.ids.device == torch.device(device):
        return positives
    return Positives(positives.ids.to(device), positives.mask.to(device))


def first_k_negatives(candidates: torch.Tensor, table: torch.Tensor, k: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """From ranked ``candidates`` [B, n] (id -1: no result), the first ``k`` per row
    that are real labels and not positives (``table``: :func:`sorted_positive_table`).

    Returns ``(ids, filled)`` [B, k] as :func:`first_k_valid`."""
    valid = (candidates >= 0) & ~is_member(candidates, table)
    return first_k_valid(candidates, valid, k)
