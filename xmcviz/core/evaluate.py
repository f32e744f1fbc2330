"""Ranking metrics for XMC: P@k, nDCG@k, PSP@k, PSnDCG@k, inverse propensities, streaming top-k.

Conventions are those of the Extreme Classification Repository's tools; napkinXC 0.7.2
(``napkinxc.metrics``) computes the same numbers (``tests/test_metrics.py`` checks it):

- P@k = (1/k) * hits in the top k, for every row (rows without labels count as 0); mean over rows.
- nDCG@k = DCG@k / IDCG@min(k, #positives) with discounts 1/log2(rank + 1); rows without
  labels count as 0; mean over rows.
- PSP@k = sum over rows of the inverse-propensity-weighted hits in the top k, divided by the sum
  over rows of the best achievable value (each row's positives ranked by inverse propensity, the
  top min(k, #positives) of them): a ratio of sums, not a mean of per-row ratios.
- PSnDCG@k = sum over rows of PS-DCG@k / IDCG@min(k, #pos), divided by the same sum for the
  ideal ranking (napkinXC normalises each row by its plain IDCG before summing, so this is not
  quite sum(PS-DCG) / sum(ideal PS-DCG)); rows without labels add 0 to both sums.

``evaluate`` takes either a score matrix or a matrix of top-k label ids.  Everything after the
top-k selection works on [N, max(ks)] arrays on the CPU in float64, so the cost is dominated by
the top-k itself, which runs on the scores' device (a CUDA tensor stays on the GPU).
``predict_topk`` streams ``E @ W.T (+ bias)`` over row batches and label chunks, so test sets of
100K rows x 100K labels are evaluated without ever holding the full score matrix.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .topk import label_chunk_for, topk_labels
from ..validation import check_float, check_int

__all__ = ["inv_propensity", "evaluate", "predict_topk"]

# Elements of a dense score block processed at once by the batched top-k (~8M: a float32 block
# of 32 MB plus boolean masks and an int32 cumsum of the same shape).
_BLOCK_ELEMS = 1 << 23


# ---------------------------------------------------------------------------------------------
# Propensities
# ---------------------------------------------------------------------------------------------

def inv_propensity(Y_train, A: float = 0.55, B: float = 1.5) -> np.ndarray:
    """Inverse propensities ``1 / p_l`` of Jain et al. (2016), float64 [L].

    ``p_l = 1 / (1 + C (N_l + B)^(-A))`` with ``C = (ln N - 1)(B + 1)^A``, where N is the number
    of training rows and N_l the number of training rows having label l (nonzero entries; values
    other than 0/1 are treated as 1).  So ``1 / p_l = 1 + C (N_l + B)^(-A)``.  Typical (A, B):
    (0.55, 1.5) by default, (0.6, 2.6) for Amazon, (0.5, 0.4) for Wikipedia datasets.

    ``Y_train`` is a scipy sparse matrix, a dense numpy array or a (dense or sparse) torch tensor,
    shape [N, L].
    """
    A, B = float(A), check_float("B", B, 0.0)
    if not np.isfinite(A):
        raise ValueError(f"A={A!r} is out of range: must be finite")
    Y = _to_bool_csr(Y_train, "Y_train")
    N, L = Y.shape
    if N < 1:
        raise ValueError(f"Y_train has N={N} rows: at least 1 is needed")
    counts = np.bincount(Y.indices, minlength=L).astype(np.float64)
    C = (np.log(N) - 1.0) * (B + 1.0) ** A
    return 1.0 + C * (counts + B) ** (-A)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def evaluate(scores_or_topk, Y_true, ks: Sequence[int] = (1, 3, 5),
             inv_propensity=None) -> dict[str, float]:
    """P@k and nDCG@k (and PSP@k, PSnDCG@k when ``inv_propensity`` is given) for each k in ``ks``.

    ``scores_or_topk`` is read by dtype:

    - **integer dtype** (numpy or torch): top-k label ids [N, K], best first, K >= max(ks); only the
      first max(ks) columns are used.  Negative ids mean "no prediction" (never a hit).
    - **floating (or bool) dtype**: a dense score matrix [N, L] (numpy, or torch on any device);
      the top max(ks) labels per row are selected in row batches on the scores' device, ties broken
      towards the lower label id.  Cast integer-valued scores to float, or they are read as ids.
    - **scipy sparse**: a sparse score matrix [N, L]; as in napkinXC only the stored entries are
      ranked (labels not stored are not predicted), ties towards the lower label id.

    ``Y_true`` is a binary scipy sparse matrix or a dense numpy / torch array [N, L] (nonzero =
    positive).  ``inv_propensity`` is an array-like [L] (e.g. from :func:`inv_propensity`).

    Returns a dict of Python floats: ``"P@k"`` for each k, then ``"nDCG@k"``, then (with
    propensities) ``"PSP@k"`` and ``"PSnDCG@k"``.  Conventions: see the module docstring.
    """
    ks = _check_ks(ks)
    kmax = max(ks)
    Y = _to_bool_csr(Y_true, "Y_true")
    N, L = Y.shape
    if N < 1:
        raise ValueError(f"Y_true has N={N} rows: at least 1 is needed")
    ids = _topk_ids(scores_or_topk, kmax, N, L)              # int64 [N, kmax] numpy, -1 = none
    ips = None
    if inv_propensity is not None:
        ips = np.asarray(_to_numpy(inv_propensity), dtype=np.float64).reshape(-1)
        if ips.shape[0] != L:
            raise ValueError(f"inv_propensity has {ips.shape[0]} entries: expected L={L} "
                             f"(the number of columns of Y_true)")
    return _metrics_from_topk(ids, Y, ks, ips)


def _metrics_from_topk(ids: np.ndarray, Y: sp.csr_matrix, ks: list[int],
                       ips: np.ndarray | None) -> dict[str, float]:
    N, L = Y.shape
    kmax = ids.shape[1]
    hits = _hits(ids, Y)                                     # bool [N, kmax]
    npos = np.diff(Y.indptr)                                 # [N]
    disc = 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))   # 1 / log2(rank + 1)
    cum_disc = np.concatenate([[0.0], np.cumsum(disc)])      # cum_disc[j] = IDCG with j positives
    has_pos = npos > 0

    out: dict[str, float] = {}
    cum_hits = np.cumsum(hits, axis=1, dtype=np.float64)
    for k in ks:
        out[f"P@{k}"] = float(cum_hits[:, k - 1].sum() / (k * N))
    dcg = np.cumsum(hits * disc, axis=1)                     # [N, kmax]
    idcg = {k: cum_disc[np.minimum(npos, k)] for k in ks}    # 0 for rows without labels
    for k in ks:
        ndcg = np.divide(dcg[:, k - 1], idcg[k], out=np.zeros(N), where=has_pos)
        out[f"nDCG@{k}"] = float(ndcg.sum() / N)
    if ips is None:
        return out

    gain = np.where(hits, ips[np.clip(ids, 0, L - 1)], 0.0)  # propensity-weighted hits
    best = _ideal_gains(Y, ips, kmax)                        # [N, kmax], desc, zero-padded
    psp_num, psp_den = np.cumsum(gain, axis=1), np.cumsum(best, axis=1)
    psdcg_num, psdcg_den = np.cumsum(gain * disc, axis=1), np.cumsum(best * disc, axis=1)
    for k in ks:
        out[f"PSP@{k}"] = _ratio(psp_num[:, k - 1].sum(), psp_den[:, k - 1].sum())
    for k in ks:
        norm = np.where(has_pos, idcg[k], 1.0)               # rows without labels add 0 anyway
        out[f"PSnDCG@{k}"] = _ratio((psdcg_num[:, k - 1] / norm).sum(),
                                    (psdcg_den[:, k - 1] / norm).sum())
    return out


def _ratio(num: float, den: float) -> float:
    # No positives anywhere (or zero propensities): nothing could be achieved, report 0.
    return float(num / den) if den > 0 else 0.0


def _hits(ids: np.ndarray, Y: sp.csr_matrix) -> np.ndarray:
    """hits[i, j] = Y[i, ids[i, j]] != 0, by binary search of row-major keys ``row * L + col``."""
    N, L = Y.shape
    keys = np.repeat(np.arange(N, dtype=np.int64), np.diff(Y.indptr)) * L + Y.indices
    if keys.size == 0:
        return np.zeros(ids.shape, dtype=bool)
    q = np.arange(N, dtype=np.int64)[:, None] * L + ids      # canonical CSR: keys sorted
    pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
    return (keys[pos] == q) & (ids >= 0)


def _ideal_gains(Y: sp.csr_matrix, ips: np.ndarray, kmax: int) -> np.ndarray:
    """Per row, the inverse propensities of its positives sorted descending, first kmax, 0-padded."""
    N = Y.shape[0]
    rows = np.repeat(np.arange(N, dtype=np.int64), np.diff(Y.indptr))
    v = ips[Y.indices]
    order = np.lexsort((-v, rows))                           # by row, then inverse propensity desc
    rank = np.arange(rows.size) - Y.indptr[rows]             # rows are already grouped
    keep = rank < kmax
    best = np.zeros((N, kmax), dtype=np.float64)
    best[rows[keep], rank[keep]] = v[order][keep]
    return best


# ---------------------------------------------------------------------------------------------
# Top-k selection
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def predict_topk(E: torch.Tensor | Iterable[torch.Tensor], W: torch.Tensor, k: int,
                 bias: torch.Tensor | None = None, row_batch: int = 4096,
                 label_chunk: int | None = None) -> torch.Tensor:
    """Top-k label ids of ``E @ W.T (+ bias)``, streamed; int64 [N, k] on ``W``'s device, best first.

    ``E`` is a dense tensor [N, d] or an iterable of dense [b, d] batches (e.g. embeddings produced
    batch by batch by an encoder); each batch is moved to ``W``'s device.  Rows are processed
    ``row_batch`` at a time and labels ``label_chunk`` at a time (``xmcviz.core.topk.topk_labels``), so
    peak extra memory is about ``row_batch * (label_chunk + 2k)`` scores plus the [N, k] result;
    the [N, L] score matrix never exists.  ``label_chunk`` None: ``label_chunk_for(row_batch)``
    (a score block of about 16M entries, 64 MB, at any L).  Ordering is by score descending, then label id; which
    of several labels tied at the k-th score gets in follows ``torch.topk``.  Pass the result to
    :func:`evaluate`.
    """
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D [L, d], got shape {tuple(W.shape)}")
    L = W.shape[0]
    k = check_int("k", k, 1, L)
    row_batch = check_int("row_batch", row_batch, 1)
    label_chunk = (label_chunk_for(row_batch) if label_chunk is None
                   else check_int("label_chunk", label_chunk, 1))
    if bias is not None and tuple(bias.shape) != (L,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}: expected ({L},)")
    batches = E.split(row_batch) if isinstance(E, torch.Tensor) else E
    out = []
    for e in batches:
        if e.dim() != 2 or e.shape[1] != W.shape[1]:
            raise ValueError(f"embedding batch has shape {tuple(e.shape)}: expected [b, "
                             f"{W.shape[1]}] to match W {tuple(W.shape)}")
        for sub in e.split(row_batch):                       # an iterable may yield big batches
            sub = sub.to(device=W.device, dtype=W.dtype)
            out.append(topk_labels(sub, W, k, bias=bias, label_chunk=label_chunk)[1])
    if not out:
        return torch.empty((0, k), dtype=torch.int64, device=W.device)
    return torch.cat(out)


def _topk_ids(P, kmax: int, N: int, L: int) -> np.ndarray:
    """int64 numpy [N, kmax] of predicted label ids, best first, -1 for "no prediction"."""
    if sp.issparse(P):
        P = sp.csr_matrix(P)
        _check_pred_shape(P.shape, N, L, "score matrix")
        return _topk_sparse(P, kmax)
    if isinstance(P, torch.Tensor):
        if P.is_sparse or P.layout != torch.strided:
            raise ValueError(f"torch sparse predictions ({P.layout}) are not supported: pass a "
                             f"scipy sparse matrix or a dense tensor")
        is_int = not (P.dtype.is_floating_point or P.dtype == torch.bool or P.is_complex())
    else:
        P = np.asarray(P)
        is_int = np.issubdtype(P.dtype, np.integer)
        if not is_int and not (np.issubdtype(P.dtype, np.floating) or P.dtype == bool):
            raise ValueError(f"predictions have dtype {P.dtype}: expected integer (top-k ids) "
                             f"or floating (scores)")
    if P.ndim != 2:
        raise ValueError(f"predictions must be 2-D, got shape {tuple(P.shape)}")
    if is_int:
        if P.shape[0] != N:
            raise ValueError(f"top-k ids have {P.shape[0]} rows: expected N={N} (rows of Y_true)")
        if P.shape[1] < kmax:
            raise ValueError(f"top-k ids have K={P.shape[1]} columns: need K >= max(ks)={kmax}")
        ids = np.asarray(_to_numpy(P[:, :kmax]), dtype=np.int64)
        if ids.size and ids.max() >= L:
            raise ValueError(f"top-k ids contain label {int(ids.max())}: expected ids < L={L}")
        return ids
    _check_pred_shape(tuple(P.shape), N, L, "score matrix")
    return _topk_dense(P, kmax)


def _check_pred_shape(shape: tuple, N: int, L: int, what: str) -> None:
    if tuple(shape) != (N, L):
        raise ValueError(f"{what} has shape {tuple(shape)}: expected ({N}, {L}) to match Y_true")


def _topk_dense(S, kmax: int) -> np.ndarray:
    """Top-kmax ids of a dense score matrix (numpy or torch), row batches on its own device."""
    S = torch.from_numpy(S) if isinstance(S, np.ndarray) else S
    N, L = S.shape
    k = min(kmax, L)
    b = max(1, _BLOCK_ELEMS // max(L, 1))
    out = np.full((N, kmax), -1, dtype=np.int64)             # pad when L < kmax
    for start in range(0, N, b):
        s = S[start:start + b]
        if s.dtype == torch.bool or (s.device.type == "cpu" and s.dtype in (torch.float16,
                                                                            torch.bfloat16)):
            s = s.float()
        out[start:start + s.shape[0], :k] = _topk_block(s, k).cpu().numpy()
    return out


def _topk_block(s: torch.Tensor, k: int) -> torch.Tensor:
    """Exact top-k of each row of ``s`` [b, L]: score descending, ties to the lower label id.

    torch.topk picks arbitrarily among labels tied at the k-th score.  Rows where more than k
    labels score >= the k-th value are redone: every label above it is taken, then the tied
    ones in id order.
    """
    if torch.isnan(s).any():                                 # NaN ranks last
        s = torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    vals, ids = torch.topk(s, k, dim=1)
    kth = vals[:, -1:]
    tied = (s >= kth).sum(1) > k
    if bool(tied.any()):
        st, kt = s[tied], kth[tied]
        gt, eq = st > kt, st == kt
        need = k - gt.sum(1, keepdim=True, dtype=torch.int32)
        take = gt | (eq & (eq.to(torch.int32).cumsum(1, dtype=torch.int32) <= need))
        ids[tied] = take.nonzero()[:, 1].view(-1, k)         # exactly k per row
    ids, _ = torch.sort(ids, dim=1)                          # id ascending, then a stable
    order = torch.argsort(s.gather(1, ids), dim=1, descending=True, stable=True)  # score sort
    return ids.gather(1, order)


def _topk_sparse(S: sp.csr_matrix, kmax: int) -> np.ndarray:
    """Top-kmax ids among the stored entries of each row of a CSR score matrix; -1 pads."""
    S = S.copy()
    S.sum_duplicates()
    N = S.shape[0]
    rows = np.repeat(np.arange(N, dtype=np.int64), np.diff(S.indptr))
    data = S.data.astype(np.float64)
    data[np.isnan(data)] = -np.inf
    order = np.lexsort((S.indices, -data, rows))             # row, score desc, id asc
    rank = np.arange(rows.size) - S.indptr[rows]
    keep = rank < kmax
    out = np.full((N, kmax), -1, dtype=np.int64)
    out[rows[keep], rank[keep]] = S.indices[order][keep]
    return out


# ---------------------------------------------------------------------------------------------
# Input conversion and validation
# ---------------------------------------------------------------------------------------------

def _check_ks(ks) -> list[int]:
    if isinstance(ks, (int, np.integer)) and not isinstance(ks, bool):
        ks = (ks,)
    try:
        ks_list = list(ks)
    except TypeError:
        raise ValueError(f"ks={ks!r} is invalid: expected a sequence of integers >= 1") from None
    if not ks_list:
        raise ValueError(f"ks={ks!r} is empty: expected at least one k >= 1")
    out: list[int] = []
    for k in ks_list:
        try:
            k = check_int("k", k, 1)
        except ValueError as e:
            raise ValueError(f"ks={ks!r} is invalid: {e}") from None
        if k not in out:
            out.append(k)
    return out


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _to_bool_csr(Y, name: str) -> sp.csr_matrix:
    """Canonical boolean CSR (sorted indices, no duplicates, no explicit zeros) of a label matrix."""
    if isinstance(Y, torch.Tensor):
        if Y.layout != torch.strided:
            Y = Y.to_dense()
        if Y.dim() != 2:
            raise ValueError(f"{name} must be 2-D [N, L], got shape {tuple(Y.shape)}")
        r, c = (Y != 0).nonzero(as_tuple=True)               # row-major: already sorted
        r, c = r.cpu().numpy(), c.cpu().numpy()
        indptr = np.zeros(Y.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=Y.shape[0]), out=indptr[1:])
        return sp.csr_matrix((np.ones(c.size, dtype=bool), c, indptr), shape=tuple(Y.shape))
    if sp.issparse(Y):
        if Y.ndim != 2:
            raise ValueError(f"{name} must be 2-D [N, L], got shape {Y.shape}")
        Y = sp.csr_matrix(Y, copy=True)
        Y.sum_duplicates()
        Y.eliminate_zeros()
        return sp.csr_matrix((np.ones(Y.nnz, dtype=bool), Y.indices, Y.indptr), shape=Y.shape)
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, L], got shape {Y.shape}")
    return sp.csr_matrix(Y != 0)
