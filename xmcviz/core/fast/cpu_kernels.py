"""Fused CPU kernels (numba) for the memory-bound row work of a step at large L.

Why: at large L the label rows a step touches are scattered over matrices far larger than the
caches, so the row work is bound by memory traffic and per-op overhead, not arithmetic.  Two
kernels replace chains of torch ops that each pass over the rows again:

* :func:`fused_adam_rows`, the step of :class:`xmcviz.core.optim.RowSparseAdam`: the
  reference makes five passes over the touched rows (gather ``m``, gather ``v``, write them
  back, ``index_add_`` into ``W``) with three [U, d] temporaries; the kernel reads and writes
  each touched row of ``m``, ``v`` and ``W`` once.
* :func:`row_sums`, the coalesced row gradient of ``W``
  (:func:`xmcviz.core.fast.score._row_gradient`): torch's path sorts the ids, builds a CSR
  matrix and multiplies it with the embeddings, and its sparse product zero-fills and copies
  the [U, d] result several times; the kernel sorts composite keys with numpy and writes each
  distinct row once.

Same arithmetic, in float32, as the torch paths (results agree to float rounding; see
``tests/test_fast_paths.py``, ``tests/test_cpu_kernels.py`` and ``tests/test_optim.py``;
speed-ups in ``benchmarks/RESULTS.md``).  Without numba, where the kernels cannot be compiled,
or for tensors they cannot take (CUDA, float64, non-contiguous), the callers take the torch
paths.  ``XMCVIZ_NUMBA=0`` turns these kernels off, ``XMCVIZ_FAST=0`` every fast path
(:func:`xmcviz.core.fast.enabled`).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from types import ModuleType

import numpy as np
import torch

from . import enabled

__all__ = ["kernels_available", "fused_adam_rows", "row_sums"]


def kernels_available(*tensors: torch.Tensor) -> bool:
    """True when the kernels can take these tensors: contiguous CPU float32, numba present and
    the kernels compiled, the fast paths :func:`~xmcviz.core.fast.enabled` and
    ``XMCVIZ_NUMBA`` not ``0``."""
    if not enabled() or os.environ.get("XMCVIZ_NUMBA", "1") == "0":
        return False
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
               for t in tensors):
        return False
    return _kernels() is not None


@functools.cache
def _kernels() -> ModuleType | None:
    """The compiled kernels' module, imported on first use (``import xmcviz`` should not pay
    for importing numba); None, after one warning, where they cannot be built."""
    if importlib.util.find_spec("numba") is None:
        return None
    try:
        k = importlib.import_module(f"{__package__}._numba_kernels")
        f32, rows = np.float32, np.zeros((2, 1), np.float32)
        k.adam_rows(rows, rows.copy(), rows.copy(), np.array([1], np.int64), rows[:1].copy(),
                    f32(0.1), f32(0.999), f32(0.001), f32(1e-8), f32(0.001))  # compiles or loads
        k.segment_row_sums(np.array([2], np.int64), 1, np.ones(1, np.float32), 1, rows)
    except Exception as err:  # noqa: BLE001 - any failure means: use the torch paths
        warnings.warn(f"xmcviz: the fused CPU kernels are unavailable ({err!r}); "
                      "using torch's paths", RuntimeWarning, stacklevel=2)
        return None
    return k


def fused_adam_rows(weight: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                    ids: torch.Tensor, grad: torch.Tensor, beta1: float, beta2: float,
                    eps: float, step_size: float) -> None:
    """One Adam step on rows ``ids`` (distinct) of ``weight`` with row gradients ``grad``, in place.

    ``m <- lerp(m, g, 1 - beta1)``, ``v <- beta2 v + (1 - beta2) g^2``,
    ``w <- w - step_size * m / (sqrt(v) + eps)`` where ``step_size`` already holds Adam's bias
    corrections.  Every tensor must pass :func:`kernels_available`; ``ids`` int64 [U],
    ``grad`` [U, *rest] for ``weight`` [L, *rest] (a label bias [L] is taken as [L, 1])."""
    f32 = np.float32

    def rows(t: torch.Tensor) -> np.ndarray:  # [L, *rest] as [L, prod(rest)] (a bias is [L, 1])
        return t.detach().reshape(t.shape[0], -1).numpy()

    _kernels().adam_rows(rows(weight), rows(exp_avg), rows(exp_avg_sq), ids.numpy(),
                         rows(grad), f32(1 - beta1), f32(beta2),
                         f32(1 - beta2), f32(eps), f32(step_size))


def row_sums(ids: torch.Tensor, coef: torch.Tensor, emb: torch.Tensor,
             live: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Distinct ids and, per id j, ``sum_{(b, k): ids[b, k] = j, live} coef[b, k] emb[b]``.

    ``ids`` int64 [B, K] (non-negative), ``coef`` [B, K] and ``emb`` [B, d] (float32,
    contiguous, passing :func:`kernels_available`), ``live`` bool [B, K] or None (all live).
    Returns ``(uniq [U] ascending, rows [U, d])``, or None where the composite sort keys
    would not fit in 63 bits (the caller then takes its torch path)."""
    B, K = ids.shape
    flat = ids.reshape(-1).numpy()
    pos = np.arange(B * K) if live is None else np.flatnonzero(live.reshape(-1).numpy())
    shift = max(int(B * K).bit_length(), 1)
    top = int(flat.max()) if flat.size else 0
    if top < 0 or top.bit_length() + shift > 62:
        return None
    # One value sort of (id << shift) | position gives the ids in order and, within an id,
    # its entries in position order (numpy's value sort is faster here than torch.sort).
    keys = np.sort((flat[pos] << shift) | pos)
    uniq, rows = _kernels().segment_row_sums(keys, shift, coef.reshape(-1).numpy(), K,
                                             emb.detach().numpy())
    return torch.from_numpy(uniq), torch.from_numpy(rows)
