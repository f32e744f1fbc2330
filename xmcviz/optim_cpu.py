"""A fused CPU kernel for the row-sparse Adam step (numba), used by :class:`xmcviz.optim.RowSparseAdam`.

Why: at large L the touched rows of ``W`` and its two moment matrices are scattered over
matrices far larger than the caches, so the step is bound by memory latency, not arithmetic.
Torch's path makes five passes over the touched rows (gather ``m``, gather ``v``, write them
back, ``index_add_`` into ``W``), each paying a cache and TLB miss per row, and allocates
three [U, d] temporaries.  This kernel makes one vectorised pass: each touched row of ``m``,
``v`` and ``W`` is read once and updated in place.  Same arithmetic, in float32, as the torch
path (results agree to float rounding; see ``tests/test_optim.py``).

Without numba, where the kernel cannot be compiled, or for tensors it cannot take (CUDA,
float64, non-contiguous) the optimiser takes the torch path.  ``XMCVIZ_FUSED_ADAM=0`` turns
the kernel off.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Callable

import numpy as np
import torch

__all__ = ["fused_available", "fused_adam_rows"]

def fused_available(*tensors: torch.Tensor) -> bool:
    """True when the kernel can take these tensors: contiguous CPU float32, numba present and
    the kernel compiled, and ``XMCVIZ_FUSED_ADAM`` not ``0``."""
    if os.environ.get("XMCVIZ_FUSED_ADAM", "1") == "0":
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
               for t in tensors):
        return False
    return _kernel() is not None


@functools.cache
def _kernel() -> Callable[..., None] | None:
    """The compiled kernel, imported on first use (importing numba costs about 0.2 s, which
    ``import xmcviz`` should not pay); None, after one warning, where it cannot be built."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        from ._optim_numba import adam_rows
        ids, rows = np.array([1], np.int64), np.zeros((2, 1), np.float32)
        f32 = np.float32
        adam_rows(rows, rows.copy(), rows.copy(), ids, rows[:1].copy(), f32(0.1), f32(0.999),
                  f32(0.001), f32(1e-8), f32(0.001))  # compiles or loads
    except Exception as err:  # noqa: BLE001 - any failure means: use the torch path
        warnings.warn(f"xmcviz: the fused CPU Adam kernel is unavailable ({err!r}); "
                      "using torch's row-sparse path", RuntimeWarning, stacklevel=2)
        return None
    return adam_rows


def fused_adam_rows(weight: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                    ids: torch.Tensor, grad: torch.Tensor, beta1: float, beta2: float,
                    eps: float, step_size: float) -> None:
    """One Adam step on rows ``ids`` (distinct) of ``weight`` with row gradients ``grad``, in place.

    ``m <- lerp(m, g, 1 - beta1)``, ``v <- beta2 v + (1 - beta2) g^2``,
    ``w <- w - step_size * m / (sqrt(v) + eps)`` where ``step_size`` already holds Adam's bias
    corrections.  Every tensor must pass :func:`fused_available`; ``ids`` int64 [U],
    ``grad`` [U, *rest] for ``weight`` [L, *rest] (a label bias [L] is taken as [L, 1])."""
    f32 = np.float32

    def rows(t: torch.Tensor) -> np.ndarray:  # [L, *rest] as [L, prod(rest)] (a bias is [L, 1])
        return t.detach().reshape(t.shape[0], -1).numpy()

    _kernel()(rows(weight), rows(exp_avg), rows(exp_avg_sq), ids.numpy(),
              rows(grad), f32(1 - beta1), f32(beta2),
              f32(1 - beta2), f32(eps), f32(step_size))
