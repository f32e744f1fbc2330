"""PCA of sparse (TF-IDF) features without densifying them.

The auxiliary model of the adversarial sampler sees an input only through its
projection ``z = (x - mean) @ V`` onto the top ``k`` principal directions ``V``
([D, k]) of the training rows.  ``X`` is never centred explicitly: the centred
matrix ``A = X - 1 mean^T`` is used as an implicit operator (``A v = X v - 1
(mean . v)``, ``A^T u = X^T u - mean (1 . u)``) inside a randomized SVD
(Halko, Martinsson & Tropp 2011: Gaussian sketch, ``power_iters`` power
iterations with re-orthonormalisation, exact SVD of the small projected
matrix).  Memory is O(nnz(X) + (N + D)(k + oversample)).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ...validation import check_int


class SparsePCA:
    """A fitted projection ``z = x @ components - offset`` (``offset = mean @ components``).

    ``components``: float32 [D, k], orthonormal columns, ordered by decreasing
    singular value, each with its largest-magnitude entry positive (so the
    signs are deterministic).  ``singular_values``: [k] of the centred
    training matrix.
    """

    def __init__(self, components: np.ndarray, offset: np.ndarray,
                 singular_values: np.ndarray | None = None) -> None:
        components = np.ascontiguousarray(components, dtype=np.float32)
        if components.ndim != 2:
            raise ValueError(f"components must be 2-D [D, k], got shape {components.shape}")
        offset = np.asarray(offset, dtype=np.float32).reshape(-1)
        if offset.shape[0] != components.shape[1]:
            raise ValueError(f"offset has {offset.shape[0]} entries, expected k={components.shape[1]}")
        self.components = components
        self.offset = offset
        self.singular_values = (np.zeros(components.shape[1]) if singular_values is None
                                else np.asarray(singular_values, dtype=np.float64))

    @property
    def num_features(self) -> int:
        return int(self.components.shape[0])

    @property
    def k(self) -> int:
        return int(self.components.shape[1])

    @classmethod
    def fit(cls, X: sp.spmatrix | np.ndarray, k: int, *, seed: int = 0, oversample: int = 10,
            power_iters: int = 4) -> "SparsePCA":
        """Fit the top-``k`` principal directions of the rows of ``X`` ([N, D])."""
        X = sp.csr_matrix(X) if not sp.issparse(X) else X.tocsr()
        N, D = X.shape
        check_int("k", k, 1, min(N, D))
        check_int("oversample", oversample, 0)
        check_int("power_iters", power_iters, 0)
        dt = np.float32 if X.dtype == np.float32 else np.float64
        mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
        mean_dt = mean.astype(dt)

        def A(V: np.ndarray) -> np.ndarray:  # centred X @ V, [N, l]
            V = V.astype(dt, copy=False)
            return np.asarray(X @ V, dtype=np.float64) - (mean_dt @ V).astype(np.float64)[None, :]

        def AT(U: np.ndarray) -> np.ndarray:  # centred X^T @ U, [D, l]
            U = U.astype(dt, copy=False)
            return (np.asarray(X.T @ U, dtype=np.float64)
                    - np.outer(mean, U.sum(axis=0, dtype=np.float64)))

        def orth(M: np.ndarray) -> np.ndarray:
            return np.linalg.qr(M)[0]

        l = min(k + oversample, N, D)
        rng = np.random.default_rng(seed)
        Q = orth(A(rng.standard_normal((D, l))))
        for _ in range(power_iters):  # sharpen the spectrum: TF-IDF spectra decay slowly
            Q = orth(A(orth(AT(Q))))
        Bt = AT(Q)  # = (Q^T A)^T, [D, l]; its left singular vectors are A's right ones
        U, s, _ = np.linalg.svd(Bt, full_matrices=False)
        V = U[:, :k]
        # Deterministic signs: the largest-magnitude entry of each direction is positive.
        big = np.abs(V).argmax(axis=0)
        V = V * np.sign(V[big, np.arange(k)] + (V[big, np.arange(k)] == 0))
        return cls(V.astype(np.float32), (mean @ V).astype(np.float32), s[:k])

    def transform(self, X: sp.spmatrix | np.ndarray) -> np.ndarray:
        """Project rows of ``X`` ([n, D], CSR or dense) to float32 [n, k]."""
        if X.shape[1] != self.num_features:
            raise ValueError(f"X has {X.shape[1]} features, the PCA was fitted on {self.num_features}")
        Xv = X.astype(np.float32) if X.dtype != np.float32 else X
        z = np.asarray(Xv @ self.components, dtype=np.float32)
        return z - self.offset[None, :]

    def transform_torch(self, X: sp.spmatrix | np.ndarray,
                        device: torch.device | str = "cpu") -> torch.Tensor:
        """:meth:`transform` as a float32 tensor on ``device``."""
        return torch.as_tensor(self.transform(X), device=device)

    def state_dict(self) -> dict:
        return {"components": torch.as_tensor(self.components),
                "offset": torch.as_tensor(self.offset),
                "singular_values": torch.as_tensor(self.singular_values)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "SparsePCA":
        return cls(np.asarray(state["components"]), np.asarray(state["offset"]),
                   np.asarray(state["singular_values"]))
