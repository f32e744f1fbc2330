"""Encoders and the extreme classifier.

A model is an encoder ``E_x = enc(x)`` followed by label scores ``f_j = w_j^T E_x (+ b_j)``.
The label matrix ``W`` is stored as **label rows**, ``[L, d]`` float32 contiguous, which is
the layout faiss indexes and the layout in which a sampled label is one contiguous row.

Scoring a subset of labels (:meth:`XMCModel.score`) gathers their rows, ``[B, K, d]``, and
takes one dot product per row and label.  The gather gives ``W`` a *sparse* gradient: only the
rows of labels that enter the loss receive one, and SparseAdam then moves only those rows
(docs/background.md#row-sparse-updates).  The cost of a step is O(B K d) for K scored labels
per row, independent of L.

That reference is what this file shows; faster versions of the same arithmetic (a fused
gather + score, a unique-ids path, a sparse-input path) live in :mod:`xmcviz.core.fast.score`
and run when :func:`xmcviz.core.fast.enabled` is True.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from . import fast
from .fast.score import scores as fast_scores
from ..validation import check_choice, check_float, check_int

__all__ = ["LinearEncoder", "MLPEncoder", "XMCModel", "build_model", "MODEL_NAMES",
           "SCORE_PATHS"]

MODEL_NAMES = ("linear", "mlp")
SCORE_PATHS = ("auto", "gather", "unique", "sparse")


def csr_tensor(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size, **kwargs) -> torch.Tensor:
    """``torch.sparse_csr_tensor(crow, col, values, size, **kwargs)``, without torch's notice that
    CSR support is "beta" (the ops used here are stable); other warnings are left alone."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size, **kwargs)


def _sparse_values(x: torch.Tensor) -> torch.Tensor:
    return x.values() if x.layout == torch.sparse_csr else x.coalesce().values()


def _with_values(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The sparse tensor ``x`` (CSR or COO) with its stored values replaced."""
    if x.layout == torch.sparse_csr:
        return csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape,
                          check_invariants=False)
    x = x.coalesce()
    return torch.sparse_coo_tensor(x.indices(), values, x.shape, is_coalesced=True,
                                   check_invariants=False)


def _to_dense(x: torch.Tensor) -> torch.Tensor:
    return x.to_dense() if x.layout != torch.strided else x


class LinearEncoder(nn.Module):
    """``E_x = x`` (d = D): the linear model's only parameters are the label weights."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features, 1)
        self.dim = self.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense ``[B, D]`` copy of the (sparse CSR / COO, or dense) batch."""
        return _to_dense(x).to(torch.float32)


class MLPEncoder(nn.Module):
    """Dropout on the input, ``Linear(D, hidden)``, ReLU (the paper's shallow network).

    Dropout acts on the stored values of the sparse input (the zeros stay zeros, as dense
    dropout would leave them) and the product is sparse @ dense, so a step costs
    O(nnz(x) * hidden) rather than O(B * D * hidden).
    """

    def __init__(self, num_features: int, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features, 1)
        self.dim = check_int("hidden", hidden, 1)
        self.dropout = check_float("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.linear = nn.Linear(self.num_features, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.layout == torch.strided:
            h = F.dropout(x, self.dropout, self.training)
            return F.relu(self.linear(h))
        if self.training and self.dropout > 0:
            x = _with_values(x, F.dropout(_sparse_values(x), self.dropout, True))
        # addmm(bias, sparse, dense): sparse @ dense with gradients for the dense weight.
        return F.relu(torch.addmm(self.linear.bias, x, self.linear.weight.T))


class _GatherRows(torch.autograd.Function):
    """``weight[ids]`` (rows of a 2-D or entries of a 1-D parameter) with a sparse COO
    gradient holding only the entries where ``live`` is True.

    ``F.embedding(..., sparse=True)`` puts *every* gathered id in the gradient, with zero
    values for entries the loss ignores; SparseAdam would then still move those rows (their
    old momentum).  Dropping them here keeps the update to the rows that are in the loss.
    (It also serves the 1-D label bias, which ``F.embedding`` cannot gather sparsely.)
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor,  # type: ignore[override]
                live: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(ids, live)
        ctx.shape = weight.shape
        return weight.index_select(0, ids.reshape(-1)).view(*ids.shape, *weight.shape[1:])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        ids, live = ctx.saved_tensors
        flat = ids.reshape(-1)
        g = grad.reshape(flat.numel(), *ctx.shape[1:])
        if live is not None:
            sel = live.reshape(-1).nonzero().squeeze(1)
            flat, g = flat.index_select(0, sel), g.index_select(0, sel)
        out = torch.sparse_coo_tensor(flat.unsqueeze(0), g, ctx.shape, check_invariants=False)
        return out, None, None


class XMCModel(nn.Module):
    """Encoder + extreme classifier ``f = W E_x (+ bias)``.

    ``encoder``: any module mapping a batch of inputs (torch sparse CSR / COO ``[B, D]``)
    to dense embeddings ``[B, dim]``.  ``W``: ``nn.Parameter`` ``[num_labels, dim]``,
    float32, contiguous (label rows), xavier-uniform with the bound of a ``dim x L`` matrix,
    ``sqrt(6 / (dim + L))``.  ``bias``: ``nn.Parameter`` ``[L]`` (zeros) when
    ``label_bias`` else ``None``.

    ``sparse_grad`` (default True) makes :meth:`score` produce sparse gradients for ``W`` and
    ``bias`` (for ``torch.optim.SparseAdam``); set it False to train with a dense optimiser.
    """

    #: Above this many gathered elements (B * K * d) the "auto" path considers "unique".
    gather_limit: int = 1 << 24

    def __init__(self, encoder: nn.Module, num_labels: int, dim: int,
                 label_bias: bool = False, sparse_grad: bool = True) -> None:
        super().__init__()
        self.num_labels = check_int("num_labels", num_labels, 1)
        self.dim = check_int("dim", dim, 1)
        self.encoder = encoder
        bound = math.sqrt(6.0 / (self.dim + self.num_labels))
        W = torch.empty(self.num_labels, self.dim, dtype=torch.float32).uniform_(-bound, bound)
        self.W = nn.Parameter(W.contiguous())
        self.bias = nn.Parameter(torch.zeros(self.num_labels)) if label_bias else None
        self.sparse_grad = bool(sparse_grad)

    # ------------------------------------------------------------------ forward
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Dense embeddings ``[B, d]`` of a batch of inputs."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``x`` (scores need label ids: see :meth:`score`)."""
        return self.embed(x)

    def full_scores(self, emb: torch.Tensor) -> torch.Tensor:
        """Scores of every label, ``[B, L]`` (dense; for small L or a few rows only)."""
        s = emb @ self.W.T
        return s if self.bias is None else s + self.bias

    def score(self, emb: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None,
              path: str = "auto") -> torch.Tensor:
        """Scores ``[B, K]`` of the labels ``ids`` (int64 ``[B, K]``) for each row of ``emb``.

        With ``mask`` (bool ``[B, K]``), entries where it is False still get their score but
        carry no gradient (to ``W``, ``bias`` or ``emb``), and their label rows do not appear
        in the sparse gradient: padding and duplicates are not in the loss, and SparseAdam
        would otherwise move their rows with the old momentum.

        ``path`` chooses among the fast paths (:mod:`xmcviz.core.fast.score`): ``"gather"``
        (a fused gather + score), ``"unique"`` (the distinct labels gathered once, for large
        d), ``"sparse"`` (only the non-zeros of an ``emb`` that needs no gradient, such as
        the linear model's x) or ``"auto"`` (picked from the shapes).  All give the
        reference's values and gradients up to float rounding; with the fast paths off
        (:func:`xmcviz.core.fast.enabled`) the reference runs whatever ``path`` says.
        """
        check_choice("path", path, SCORE_PATHS)
        if ids.dim() != 2 or ids.shape[0] != emb.shape[0]:
            raise ValueError(f"ids has shape {tuple(ids.shape)}: expected [{emb.shape[0]}, K]")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}: expected {tuple(ids.shape)}")
        if path == "sparse" and emb.requires_grad:
            raise ValueError("path='sparse' gives no gradient to emb, which requires one: "
                             "allowed for inputs without gradient (the linear model's x)")
        if fast.enabled():
            s = fast_scores(self, emb, ids, mask, path)
        else:  # the reference: gather the [B, K, d] label rows, one dot product each
            s = torch.einsum("bd,bkd->bk", emb, self.rows(self.W, ids, mask))
        if self.bias is not None:
            s = s + self.rows(self.bias, ids, mask)
        if mask is not None:
            # The loss ignores masked entries; detaching them makes "no gradient" exact for
            # any caller (their rows are already out of the sparse gradient).
            s = torch.where(mask, s, s.detach())
        return s

    def rows(self, weight: torch.Tensor, ids: torch.Tensor,
             live: torch.Tensor | None = None) -> torch.Tensor:
        """``weight[ids]`` (rows of ``W`` or entries of ``bias``) with the gradient this model
        trains with: dense, or (``sparse_grad``) sparse holding only the ids where ``live``."""
        if not self.sparse_grad:
            return weight[ids]
        return _GatherRows.apply(weight, ids, live)


def build_model(kind: str, num_features: int, num_labels: int, hidden: int = 128,
                dropout: float = 0.2, label_bias: bool = False,
                sparse_grad: bool = True) -> XMCModel:
    """A built-in model: ``"linear"`` (E_x = x, d = D) or ``"mlp"`` (dropout, D -> hidden, ReLU)."""
    check_choice("model", kind, MODEL_NAMES)
    if kind == "linear":
        enc: nn.Module = LinearEncoder(num_features)
    else:
        enc = MLPEncoder(num_features, hidden=hidden, dropout=dropout)
    return XMCModel(enc, num_labels, enc.dim, label_bias=label_bias, sparse_grad=sparse_grad)
