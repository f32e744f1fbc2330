"""Fast paths of the samplers' batched ops (references: :mod:`xmcviz.samplers.ops` and
:func:`xmcviz.samplers.mips.assemble_negatives`).

Why: on the CPU the torch versions are chains of many small ops on ``[B, R]`` arrays whose
dispatch, not their arithmetic, dominates; numpy does the same steps with less overhead, and
in int32 where the ids allow it (half the memory traffic of int64).  Every function here gives
exactly the reference's result (integers and masks, no rounding), from the same random draws.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["INT32_SAFE", "BROADCAST_MAX", "sorted_positive_table_np", "nth_negative_narrow",
           "first_occurrence_np", "mips_negatives_np"]

#: Ids and draws below this fit int32.
INT32_SAFE = 2**31 - 1
#: Up to this many positives per row, counting by broadcast compare beats a binary search.
BROADCAST_MAX = 16


def sorted_positive_table_np(ids: np.ndarray, mask: np.ndarray, pad: int) -> np.ndarray:
    """:func:`xmcviz.samplers.ops.sorted_positive_table`'s table in numpy: per row the distinct
    ids where ``mask``, sorted ascending, padded on the right with ``pad`` (``ids`` [B, P],
    P >= 1).  A second sort runs only when some row repeats an id."""
    table = np.sort(np.where(mask, ids, pad), axis=1)
    dup = table[:, 1:] == table[:, :-1]
    if dup.any():
        table[:, 1:][dup] = pad
        table.sort(axis=1)
    return table


def nth_negative_narrow(shifted: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v + #{k : shifted[:, k] <= v}`` per row (:func:`xmcviz.samplers.ops.nth_negative`)
    for a narrow table (at most :data:`BROADCAST_MAX` columns): one compare per column over
    the whole batch instead of a batched binary search; on the CPU in numpy int32."""
    if v.device.type == "cpu" and (v.numel() == 0 or int(v.max()) < INT32_SAFE):
        return torch.from_numpy(nth_negative_np(shifted.numpy(), v.numpy()))
    out = v.clone()
    for j in range(shifted.shape[1]):  # a loop over the few columns, not over rows
        out += shifted[:, j:j + 1] <= v
    return out


def nth_negative_np(shifted: np.ndarray, v: np.ndarray) -> np.ndarray:
    """:func:`nth_negative_narrow` in numpy int32 (``v`` < 2^31 - 1; ``shifted``: p_(k) - k
    per row, its padding at or above 2^31 - 1 so that it is never counted)."""
    vv = v.astype(np.int32)
    sh = np.minimum(shifted, INT32_SAFE).astype(np.int32)
    out = vv.copy()
    for j in range(sh.shape[1]):
        out += sh[:, j:j + 1] <= vv
    return out.astype(np.int64)


def first_occurrence_np(ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """:func:`xmcviz.samplers.ops.first_occurrence` on numpy arrays.

    Composite keys ``(id << s) | position`` with 2^s > n, sorted per row by value (they are
    distinct, so no stable sort and no index array is needed; int32 when they fit); an entry
    is a repeat when its sorted neighbour on the left has the same id.  Repeats are rare, so
    they are cleared one by one from their positions (the key's low bits) instead of
    scattering the whole sorted mask back."""
    B, n = ids.shape
    if n == 0 or B == 0:
        return valid.copy()
    shift = int(n).bit_length()
    dtype = np.int32 if int(ids.max()) < (1 << (30 - shift)) else np.int64
    pos = np.arange(n, dtype=dtype)
    # Every invalid entry gets a distinct negative key, so it never equals anything.
    keys = np.where(valid, ids.astype(dtype, copy=False), -1 - pos)
    comp = np.sort((keys << shift) | pos, axis=1)
    sk = comp >> shift
    r, c = np.nonzero(sk[:, 1:] == sk[:, :-1])
    first = valid.copy()
    first[r, comp[r, c + 1] & ((1 << shift) - 1)] = False
    return first


def mips_negatives_np(cand: np.ndarray, table: np.ndarray, count: np.ndarray,
                      draws: np.ndarray, k: int, num_negatives: int, num_labels: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """MIPS-s negatives ``(ids, mask)`` [B, num_negatives] in numpy, as the reference
    :func:`xmcviz.samplers.mips.assemble_negatives` builds them for ``k < num_negatives``.

    ``cand`` [B, n]: search results best first (-1: none); ``table`` [B, P]: the rows'
    sorted positive table and ``count`` [B] its real entries; ``draws`` [B, num_negatives - k]:
    :func:`xmcviz.samplers.ops.raw_draws`, reduced here modulo each row's number of negatives
    as :func:`xmcviz.samplers.ops.uniform_excluding` reduces them (numpy's int64 remainder
    is cheaper than torch's on the CPU)."""
    B = cand.shape[0]
    # First k search results that are labels and not positives (first_k_negatives).
    member = (cand[:, :, None] == table[:, None, :]).any(axis=2)
    valid = (cand >= 0) & ~member
    rank = np.cumsum(valid, axis=1) - 1
    keep = valid & (rank < k)
    slot = np.where(keep, rank, k)  # entries not kept go to a dump column k
    rows = np.arange(B)[:, None]
    ids = np.zeros((B, num_negatives + 1), np.int64)
    ok = np.zeros((B, num_negatives + 1), bool)
    ids[rows, slot] = np.where(keep, cand, 0)
    ok[rows, slot] = keep
    ids, ok = ids[:, :num_negatives], ok[:, :num_negatives]
    # The uniform negatives (uniform_excluding + nth_negative): table entries past count are
    # padding, left as they are (above every draw, never counted).
    real = np.arange(table.shape[1]) < count[:, None]
    shifted = np.where(real, table - np.arange(table.shape[1]), table)
    v = draws % np.maximum(num_labels - count, 1)[:, None]
    any_neg = (count < num_labels)[:, None]
    ids[:, k:] = np.where(any_neg, nth_negative_np(shifted, v), 0)
    ok[:, k:] = any_neg
    return ids, first_occurrence_np(ids, ok)
