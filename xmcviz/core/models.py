"""Encoders and the extreme classifier.

A model is an encoder ``E_x = enc(x)`` followed by label scores ``f_j = w_j^T E_x (+ b_j)``.
The label matrix ``W`` is stored as **label rows**, ``[L, d]`` float32 contiguous, which is
the layout faiss indexes and the layout in which a sampled label is one contiguous row.

Scoring a subset of labels gathers their rows with ``F.embedding(..., sparse=True)`` (or, when
some entries are masked out of the loss, an equivalent gather whose sparse gradient leaves
them out) so ``W`` gets a *sparse* gradient: only the rows of labels that enter the loss
receive a gradient, and SparseAdam then moves only those rows (SPEC section 1, "row-sparse
updates").  The cost of a step is O(B K d) for K scored labels per row, independent of L.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .fast.cpu_kernels import kernels_available, row_sums
from ..validation import check_choice, check_float, check_int

__all__ = ["LinearEncoder", "MLPEncoder", "XMCModel", "build_model", "MODEL_NAMES",
           "SCORE_PATHS"]

MODEL_NAMES = ("linear", "mlp")
SCORE_PATHS = ("auto", "gather", "unique", "sparse")

#: "auto" takes the sparse path for inputs with no gradient and at most this share of non-zeros.
SPARSE_DENSITY = 0.25

# torch warns once per process that sparse CSR support is "beta"; the ops used here are stable.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def _sparse_values(x: torch.Tensor) -> torch.Tensor:
    return x.values() if x.layout == torch.sparse_csr else x.coalesce().values()


def _with_values(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The sparse tensor ``x`` (CSR or COO) with its stored values replaced."""
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape,
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


def _row_gradient(ids: torch.Tensor, grad: torch.Tensor, emb: torch.Tensor,
                  live: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """The coalesced sparse gradient of ``W`` for ``s[b, k] = W[ids[b, k]] . emb[b]``.

    Row j gets ``sum_{(b, k): ids[b, k] = j, live} grad[b, k] emb[b]``.  One sort of the live
    ids gives the distinct rows and, per row, its (b, grad) pairs as a CSR matrix A ([U, B]);
    the row gradients are then ``A @ emb``, a sparse-dense product that never materialises
    the ``[B K, d]`` per-entry gradients, and the result is already coalesced (the optimiser
    skips its own sort).  On the CPU a numba kernel does the same with one numpy sort and one
    pass (:func:`xmcviz.core.fast.cpu_kernels.row_sums`: at L = 1M, 0.9 ms instead of 4-12 ms, most of
    which is the sparse product zero-filling and copying its [U, d] result)."""
    if ids.device.type == "cpu":
        grad, emb = grad.contiguous(), emb.contiguous()  # no copies in the usual case
        out = row_sums(ids, grad, emb, live) if kernels_available(grad, emb) else None
        if out is not None:
            uniq, vals = out
            return torch.sparse_coo_tensor(uniq.unsqueeze(0), vals, shape, is_coalesced=True,
                                           check_invariants=False)
    B, K = ids.shape
    flat, g = ids.reshape(-1), grad.reshape(-1)
    col = None
    if live is not None:
        sel = live.reshape(-1).nonzero().squeeze(1)
        flat, g, col = flat.index_select(0, sel), g.index_select(0, sel), sel // K
    sid, order = torch.sort(flat)
    uniq, counts = torch.unique_consecutive(sid, return_counts=True)
    crow = counts.new_zeros(uniq.numel() + 1)
    torch.cumsum(counts, 0, out=crow[1:])
    col = order // K if col is None else col.index_select(0, order)
    A = torch.sparse_csr_tensor(crow, col, g.index_select(0, order), (uniq.numel(), B),
                                check_invariants=False)
    vals = A @ emb if uniq.numel() else emb.new_zeros((0, emb.shape[1]))
    return torch.sparse_coo_tensor(uniq.unsqueeze(0), vals, shape, is_coalesced=True,
                                   check_invariants=False)


class _GatherScores(torch.autograd.Function):
    """``s[b, k] = W[ids[b, k]] . emb[b]`` with a sparse COO gradient for ``W`` holding only
    the entries where ``live`` is True (and no gradient from the others to ``emb``).

    The same values and gradients as ``einsum('bd,bkd->bk', emb, _GatherRows(W, ids, live))``
    with less work: autograd's einsum backward builds the ``[B, K, d]`` row gradient as a
    batched outer product (a k = 1 matmul) and then transposes it with a full copy, the
    gather's backward copies the live rows once more and the optimiser then coalesces them;
    here the coalesced row gradient comes from one sort and one sparse product
    (:func:`_row_gradient`).
    """

    @staticmethod
    def forward(ctx, emb: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,  # type: ignore[override]
                live: torch.Tensor | None) -> torch.Tensor:
        B, K = ids.shape
        rows = weight.index_select(0, ids.reshape(-1)).view(B, K, weight.shape[1])
        ctx.save_for_backward(emb, rows, ids, live)
        ctx.shape = weight.shape
        return torch.bmm(rows, emb.unsqueeze(2)).squeeze(2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        emb, rows, ids, live = ctx.saved_tensors
        if live is not None:
            grad = torch.where(live, grad, grad.new_zeros(()))
        g_emb = g_w = None
        if ctx.needs_input_grad[0]:
            g_emb = torch.bmm(grad.unsqueeze(1), rows).squeeze(1)
        if ctx.needs_input_grad[1]:
            g_w = _row_gradient(ids, grad, emb, live, ctx.shape)
        return g_emb, g_w, None, None


class _SparseScores(torch.autograd.Function):
    """Scores ``s[b, k] = sum_f x[b, f] * W[ids[b, k], f]`` from the non-zeros of ``x`` only.

    The linear model's embedding is the sparse input itself (d = D): a dense ``x @ W_U.T``
    costs O(B U D) forward and again backward, while this gather product costs
    O(K nnz(x)), and its gradient for ``W`` holds only the rows of live entries (row-sparse,
    for SparseAdam), or is dense when ``sparse_grad`` is False.  ``x`` gets no gradient.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, ids: torch.Tensor,  # type: ignore[override]
                live: torch.Tensor | None, row: torch.Tensor, col: torch.Tensor,
                val: torch.Tensor, sparse_grad: bool) -> torch.Tensor:
        B, K = ids.shape
        D = weight.shape[1]
        # Each non-zero x[b, f] meets the K labels of its row: a [K, nnz] gather of W[ids, f]
        # (label-major, so one label's reads stay within its row of W).
        idsT = ids.T[:, row]                                              # [K, nnz]
        prod = weight.reshape(-1)[idsT * D + col] * val
        s = torch.zeros(K, B, dtype=weight.dtype, device=weight.device).index_add_(1, row, prod)
        ctx.save_for_backward(ids, idsT, live, row, col, val)
        ctx.shape, ctx.sparse_grad = weight.shape, sparse_grad
        return s.T

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        ids, idsT, live, row, col, val = ctx.saved_tensors
        L, D = ctx.shape
        if live is not None:
            grad = grad * live
        gt = (grad.T[:, row] * val).reshape(-1)                          # [K nnz]
        if not ctx.sparse_grad:
            dense = torch.zeros(L * D, dtype=grad.dtype, device=grad.device)
            dense.index_add_(0, (idsT * D + col).reshape(-1), gt)
            return dense.view(L, D), *(None,) * 6
        uniq = torch.unique(ids if live is None else ids[live])  # rows of live entries only
        # Entries that are not live have a zero gradient: any in-range row index will do.
        pos = torch.searchsorted(uniq, ids).clamp_(max=max(uniq.numel() - 1, 0)).T[:, row]
        rows = torch.zeros(uniq.numel() * D, dtype=grad.dtype, device=grad.device)
        if uniq.numel():
            rows.index_add_(0, (pos * D + col).reshape(-1), gt)
        out = torch.sparse_coo_tensor(uniq.unsqueeze(0), rows.view(-1, D), (L, D),
                                      is_coalesced=True, check_invariants=False)
        return out, *(None,) * 6


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

        ``path``: ``"gather"`` gathers a ``[B, K, d]`` block of label rows and takes per-row
        dot products (``einsum('bd,bkd->bk')``), cost O(B K d) independent of L; ``"unique"``
        gathers the U distinct labels once and computes ``emb @ W_U.T``, cost O(U d + B U d),
        lighter in memory when d is large (the linear model, d = D).  ``"auto"`` picks gather
        unless its block would exceed :attr:`gather_limit` elements and the unique path needs
        less memory.  ``"sparse"`` (for an ``emb`` that needs no gradient, such as the linear
        model's input x) multiplies only the non-zeros of ``emb`` with the gathered weights,
        cost O(K nnz(emb)); ``"auto"`` takes it for a wide ``emb`` (d >= 256) without
        gradient and at most :data:`SPARSE_DENSITY` non-zeros.  All give the same values and
        gradients (up to float rounding).
        """
        check_choice("path", path, SCORE_PATHS)
        if ids.dim() != 2 or ids.shape[0] != emb.shape[0]:
            raise ValueError(f"ids has shape {tuple(ids.shape)}: expected [{emb.shape[0]}, K]")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)}: expected {tuple(ids.shape)}")
        if path == "sparse" and emb.requires_grad:
            raise ValueError("path='sparse' gives no gradient to emb, which requires one: "
                             "allowed for inputs without gradient (the linear model's x)")
        nz = self._sparse_input(emb) if path == "auto" else None
        if path == "sparse":
            nz = emb.detach().nonzero(as_tuple=True)
        if nz is not None:
            row, col = nz
            s = _SparseScores.apply(self.W, ids, mask, row, col, emb.detach()[row, col],
                                    self.sparse_grad)
        else:
            s = self._dense_scores(emb, ids, mask, path)
        if self.bias is not None:
            s = s + self._rows(self.bias, ids, mask)
        if mask is not None:
            # The loss ignores masked entries; detaching them makes "no gradient" exact for
            # any caller (their rows are already out of the sparse gradient).
            s = torch.where(mask, s, s.detach())
        return s

    # ------------------------------------------------------------------ internals
    def _rows(self, weight: torch.Tensor, ids: torch.Tensor,
              live: torch.Tensor | None) -> torch.Tensor:
        """``weight[ids]`` with the gradient this model trains with (sparse or dense)."""
        if not self.sparse_grad:
            return weight[ids]
        if live is None and weight.dim() == 2:
            return F.embedding(ids, weight, sparse=True)
        return _GatherRows.apply(weight, ids, live)

    def _dense_scores(self, emb: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None,
                      path: str) -> torch.Tensor:
        """``w_j^T emb`` without the bias by the gather or the unique-ids path."""
        B, K = ids.shape
        unique, u = self._use_unique(B * K, ids, path, B)
        if not unique:
            if self.sparse_grad:  # one fused gather + score with a lean backward
                return _GatherScores.apply(emb, self.W, ids, mask)
            return torch.einsum("bd,bkd->bk", emb, self._rows(self.W, ids, mask))
        uniq, inv = u
        inv = inv.view(B, K)
        live_u = None
        if mask is not None:  # a distinct label is live if any live entry refers to it
            live_u = torch.zeros(uniq.shape, dtype=torch.bool, device=ids.device)
            live_u[inv[mask]] = True
        return (emb @ self._rows(self.W, uniq, live_u).T).gather(1, inv)

    def _sparse_input(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The non-zeros ``(row, col)`` of a wide, mostly-zero ``emb`` that needs no gradient
        (the linear model's x); None for any other ``emb``.  One scan finds and counts them."""
        if emb.requires_grad or emb.dim() != 2 or emb.shape[1] < 256:
            return None
        row, col = emb.detach().nonzero(as_tuple=True)
        return (row, col) if row.numel() <= SPARSE_DENSITY * emb.numel() else None

    def _use_unique(self, n_pairs: int, ids: torch.Tensor, path: str, num_rows: int
                    ) -> tuple[bool, tuple[torch.Tensor, torch.Tensor] | None]:
        if path == "gather":
            return False, None
        if path == "auto" and n_pairs * self.dim <= self.gather_limit:
            return False, None
        uniq, inv = torch.unique(ids, return_inverse=True)
        if path == "unique":
            return True, (uniq, inv)
        U = uniq.numel()
        return U * self.dim + num_rows * U < n_pairs * self.dim, (uniq, inv)


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
