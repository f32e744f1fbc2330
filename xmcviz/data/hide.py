"""Hide a fraction of the training positives: the controlled experiment on false negatives.

Real XMC labels are incomplete: a tag nobody added is a *missing positive*, and a sampler that
looks for high-scoring non-positives may find exactly those.  Hiding known positives before
training makes such false negatives countable: the hidden pairs are kept aside, the model never
sees them as positives, and the ``hidden`` hook reports how often each sampler draws them as
negatives and how well the model still ranks them.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp

from ..validation import check_float, check_int
from .dataset import Dataset

# Mixed into the seed so the hidden set does not repeat another use of the same seed.
_HIDE_STREAM = 0x4849_4445


def split_positives(Y: sp.csr_matrix, fraction: float, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """``(visible, hidden)``: exactly round(fraction * nnz) positives, chosen uniformly without
    replacement by ``seed``, move to ``hidden``; both keep ``Y``'s shape and format."""
    check_float("hide_labels", fraction, 0.0, 1.0, high_inclusive=False)
    check_int("seed", seed, 0)
    Y = sp.csr_matrix(Y)
    rng = np.random.default_rng((int(seed), _HIDE_STREAM))
    hide = np.zeros(Y.nnz, dtype=bool)
    hide[rng.choice(Y.nnz, size=int(round(fraction * Y.nnz)), replace=False)] = True
    rows = np.repeat(np.arange(Y.shape[0]), np.diff(Y.indptr))

    def part(sel: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix((Y.data[sel], (rows[sel], Y.indices[sel])), shape=Y.shape, dtype=np.float32)
        m.sort_indices()
        return m
    return part(~hide), part(hide)


def hide_positives(ds: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A copy of ``ds`` whose ``Y_train`` lacks the hidden positives; they are in
    ``meta["Y_hidden"]`` (CSR, same shape) and their count in ``meta["hidden_positives"]``."""
    visible, hidden = split_positives(ds.Y_train, fraction, seed)
    return replace(ds, Y_train=visible,
                   meta={**ds.meta, "Y_hidden": hidden, "hidden_positives": int(hidden.nnz),
                         "hide_labels": float(fraction), "hide_seed": int(seed)})


def hidden_labels(ds) -> sp.csr_matrix | None:
    """The hidden training positives of a dataset made by :func:`hide_positives` (None otherwise)."""
    return (getattr(ds, "meta", None) or {}).get("Y_hidden")
