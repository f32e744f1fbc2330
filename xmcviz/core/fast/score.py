"""Fast paths of :meth:`xmcviz.core.models.XMCModel.score` (the label scores without the bias).

The reference (in ``models.py``) gathers a ``[B, K, d]`` block of label rows and takes per-row
dot products.  The same values and gradients come faster from:

* ``"gather"``, :class:`_GatherScores`: one fused gather + score whose backward builds the
  coalesced row gradient of ``W`` directly (:func:`_row_gradient`) instead of autograd's
  ``[B, K, d]`` outer products, their transposed copy and the optimiser's coalescing sort;
* ``"unique"``: the U distinct labels gathered once and ``emb @ W_U.T``, lighter in memory
  when d is large (the linear model, d = D);
* ``"sparse"``, :class:`_SparseScores`: for an ``emb`` without gradient that is mostly zeros
  (the linear model's input x), only its non-zeros meet the gathered weights, O(K nnz).

``"auto"`` picks among them from the shapes (:func:`scores`).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from .cpu_kernels import kernels_available, row_sums

if TYPE_CHECKING:  # annotations only: models.py imports this module
    from ..models import XMCModel

__all__ = ["scores", "SPARSE_DENSITY", "SPARSE_MIN_DIM"]

#: "auto" takes the sparse path for inputs with no gradient and at most this share of non-zeros
SPARSE_DENSITY = 0.25
#: ... and at least this many columns (narrow inputs gain nothing from it).
SPARSE_MIN_DIM = 256


def scores(model: "XMCModel", emb: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None,
           path: str) -> torch.Tensor:
    """``w_j^T emb`` for the labels ``ids`` [B, K] (no bias), by ``path`` (already validated:
    ``"auto"``, ``"gather"``, ``"unique"`` or ``"sparse"``), with the gradients of the
    reference: none from entries where ``mask`` is False, and, when ``model.sparse_grad``,
    a sparse gradient of ``W`` holding only the rows of live entries."""
    nz = _sparse_input(emb) if path == "auto" else None
    if path == "sparse":
        nz = emb.detach().nonzero(as_tuple=True)
    if nz is not None:
        row, col = nz
        return _SparseScores.apply(model.W, ids, mask, row, col, emb.detach()[row, col],
                                   model.sparse_grad)
    B, K = ids.shape
    unique = _use_unique(model, ids, path)
    if unique is None:
        if model.sparse_grad:
            return _GatherScores.apply(emb, model.W, ids, mask)
        return torch.einsum("bd,bkd->bk", emb, model.rows(model.W, ids, mask))
    uniq, inv = unique
    inv = inv.view(B, K)
    live_u = None
    if mask is not None:  # a distinct label is live if any live entry refers to it
        live_u = torch.zeros(uniq.shape, dtype=torch.bool, device=ids.device)
        live_u[inv[mask]] = True
    return (emb @ model.rows(model.W, uniq, live_u).T).gather(1, inv)


def _sparse_input(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The non-zeros ``(row, col)`` of a wide, mostly-zero ``emb`` that needs no gradient
    (the linear model's x); None for any other ``emb``.  One scan finds and counts them."""
    if emb.requires_grad or emb.dim() != 2 or emb.shape[1] < SPARSE_MIN_DIM:
        return None
    row, col = emb.detach().nonzero(as_tuple=True)
    return (row, col) if row.numel() <= SPARSE_DENSITY * emb.numel() else None


def _use_unique(model: "XMCModel", ids: torch.Tensor, path: str
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(distinct ids, inverse)`` when the unique-ids path is taken, else None.

    ``"auto"`` keeps the gather path while its ``[B, K, d]`` block stays within
    ``model.gather_limit`` elements, and otherwise takes the unique path when its
    ``U d + B U`` elements are fewer."""
    if path == "gather":
        return None
    B, K = ids.shape
    if path == "auto" and B * K * model.dim <= model.gather_limit:
        return None
    uniq, inv = torch.unique(ids, return_inverse=True)
    if path == "unique":
        return uniq, inv
    U = uniq.numel()
    return (uniq, inv) if U * model.dim + B * U < B * K * model.dim else None


def _row_gradient(ids: torch.Tensor, grad: torch.Tensor, emb: torch.Tensor,
                  live: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """The coalesced sparse gradient of ``W`` for ``s[b, k] = W[ids[b, k]] . emb[b]``.

    Row j gets ``sum_{(b, k): ids[b, k] = j, live} grad[b, k] emb[b]``.  One sort of the live
    ids gives the distinct rows and, per row, its (b, grad) pairs as a CSR matrix A ([U, B]);
    the row gradients are then ``A @ emb``, a sparse-dense product that never materialises
    the ``[B K, d]`` per-entry gradients, and the result is already coalesced (the optimiser
    skips its own sort).  On the CPU the numba kernel :func:`~.cpu_kernels.row_sums` does the
    same with one numpy sort and one pass, avoiding the sparse product's zero-filling and
    copying of its ``[U, d]`` result."""
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
    with warnings.catch_warnings():  # torch's notice that CSR support is "beta"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        A = torch.sparse_csr_tensor(crow, col, g.index_select(0, order), (uniq.numel(), B),
                                    check_invariants=False)
    vals = A @ emb if uniq.numel() else emb.new_zeros((0, emb.shape[1]))
    return torch.sparse_coo_tensor(uniq.unsqueeze(0), vals, shape, is_coalesced=True,
                                   check_invariants=False)


class _GatherScores(torch.autograd.Function):
    """``s[b, k] = W[ids[b, k]] . emb[b]`` with a sparse COO gradient for ``W`` holding only
    the entries where ``live`` is True (and no gradient from the others to ``emb``).

    The reference's values and gradients with less work: autograd's einsum backward builds
    the ``[B, K, d]`` row gradient as a batched outer product and then transposes it with a
    full copy, the gather's backward copies the live rows once more and the optimiser then
    coalesces them; here the coalesced row gradient comes from one sort and one sparse
    product (:func:`_row_gradient`).
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
