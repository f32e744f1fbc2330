"""Row-sparse Adam for the label matrix: ``torch.optim.SparseAdam``'s algorithm in O(U d) a step.

A step touches only the U distinct rows in the gradient (at most B (P + R) of them, whatever L
is): the gradient is coalesced with one sort of its row ids (or used as is when the model
already produced it coalesced, as :class:`xmcviz.core.models.XMCModel` does), the touched rows of
both moments are gathered, updated densely and written back, and the step is ``index_add_``ed
into the parameter.  Nothing of size L is allocated or scanned after the first step (which
allocates the two moment matrices, as SparseAdam does).

The update below (:func:`adam_rows`, torch ops) is the reference.  At large L the touched rows
are scattered over matrices far larger than the caches, so a step is dominated by memory
latency per touched row, and the reference's five passes over them cost more than its
arithmetic; on the CPU a fused numba kernel (:func:`xmcviz.core.fast.cpu_kernels.fused_adam_rows`)
makes one pass instead, when the fast paths are on (:func:`xmcviz.core.fast.enabled`).  The
moments stay two separate ``[L, d]`` tensors (an interleaved ``[L, 2, d]`` buffer saves page
walks but loses them again in elementwise ops on strided halves, and would make the state's
tensors views).

The state is SparseAdam's: ``step``, ``exp_avg``, ``exp_avg_sq``.
"""
from __future__ import annotations

import math

import torch

from .fast.cpu_kernels import fused_adam_rows, kernels_available

__all__ = ["RowSparseAdam", "adam_rows", "coalesce_rows"]


def coalesce_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, values)`` of a sparse COO gradient with duplicate rows summed.

    ``ids`` int64 [U] sorted ascending and distinct; ``values`` [U, *rest].  One sort of the
    row ids (``torch.unique`` with the inverse) and one ``index_add_`` into a compact buffer;
    never anything of size L.  A gradient whose ids are already strictly increasing is
    returned as is."""
    idx, vals = grad._indices()[0], grad._values()
    # Autograd may drop the coalesced flag of a gradient built coalesced (the model's is):
    # strictly increasing ids are checked in O(nnz) instead of sorted again.
    if grad.is_coalesced() or bool((idx[1:] > idx[:-1]).all()):
        return idx, vals
    uniq, inv = torch.unique(idx, sorted=True, return_inverse=True)
    out = vals.new_zeros((uniq.numel(), *vals.shape[1:]))
    return uniq, out.index_add_(0, inv, vals)


def adam_rows(weight: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
              ids: torch.Tensor, grad: torch.Tensor, beta1: float, beta2: float, eps: float,
              step_size: float) -> None:
    """One Adam step on rows ``ids`` (distinct) of ``weight`` with row gradients ``grad``, in
    place (the reference of :func:`~xmcviz.core.fast.cpu_kernels.fused_adam_rows`).

    ``m <- lerp(m, g, 1 - beta1)``, ``v <- beta2 v + (1 - beta2) g^2``,
    ``w <- w - step_size * m / (sqrt(v) + eps)``, where ``step_size`` already holds Adam's
    bias corrections.  Rows not in ``ids`` are neither read nor written."""
    m = exp_avg.index_select(0, ids)
    v = exp_avg_sq.index_select(0, ids)
    m.lerp_(grad, 1 - beta1)
    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    exp_avg.index_copy_(0, ids, m)
    exp_avg_sq.index_copy_(0, ids, v)
    weight.index_add_(0, ids, m.div_(v.sqrt_().add_(eps)), alpha=-step_size)


class RowSparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` with a row-gather step: same algorithm, state and state_dict.

    For each parameter with a sparse gradient: coalesce it (:func:`coalesce_rows`) and update
    the touched rows (:func:`adam_rows`: gather the rows of both moments, update them densely,
    write them back, ``index_add_`` the bias-corrected step into the parameter; on the CPU the
    fused kernel does the same in one pass).  Rows not in the gradient are neither read nor
    written (no momentum on untouched rows, as SparseAdam).  Results agree with SparseAdam to
    float rounding (sums of duplicate rows may be taken in another order).
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            eps, lr = group["eps"], float(group["lr"])
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("RowSparseAdam needs sparse gradients: use Adam for dense")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                idx, g = coalesce_rows(p.grad)  # duplicates summed: the update is non-linear
                if idx.numel() == 0:
                    continue
                if group.get("maximize", False):
                    g = -g
                t = state["step"]
                step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                args = (p.data, state["exp_avg"], state["exp_avg_sq"], idx, g,
                        beta1, beta2, eps, step_size)
                if kernels_available(p, state["exp_avg"], state["exp_avg_sq"], g):
                    fused_adam_rows(*args)  # the fast path: one pass over the touched rows
                else:
                    adam_rows(*args)
        return loss
