"""numba kernels behind :mod:`xmcviz.core.fast.cpu_kernels` (imported only when used).

Module-level so that numba's on-disk cache serves later processes (a kernel compiled inside a
function is compiled again in every process).  ``error_model="numpy"`` drops numba's
Python-style zero-division check, a branch that keeps LLVM from vectorising the inner loops.
"""
import numba
import numpy as np

__all__ = ["adam_rows", "segment_row_sums"]


@numba.njit(cache=True, boundscheck=False, nogil=True, error_model="numpy")
def adam_rows(w, m, v, ids, g, one_minus_beta1, beta2, one_minus_beta2, eps,
              step_size):  # type: ignore[no-untyped-def]
    """Adam on rows ``ids`` of ``w`` (with moments ``m``, ``v``), in place, in one pass.

    Row ``ids[r]`` gets gradient ``g[r]``.  The rows are independent, so the out-of-order core
    overlaps the cache misses of consecutive rows (no explicit prefetching needed)."""
    n, d = ids.shape[0], w.shape[1]
    for r in range(n):
        i = ids[r]
        for j in range(d):
            gj = g[r, j]
            mj = m[i, j] + one_minus_beta1 * (gj - m[i, j])  # lerp, as torch's path
            vj = beta2 * v[i, j] + one_minus_beta2 * gj * gj
            m[i, j] = mj
            v[i, j] = vj
            w[i, j] -= step_size * (mj / (np.sqrt(vj) + eps))


@numba.njit(cache=True, boundscheck=False, nogil=True, error_model="numpy")
def segment_row_sums(keys, shift, coef, per_row, emb):  # type: ignore[no-untyped-def]
    """Distinct ids and their summed rows from sorted composite keys ``(id << shift) | p``.

    Entry ``p`` (a position in a flattened ``[B, per_row]`` array) contributes
    ``coef[p] * emb[p // per_row]`` to the row of its id.  Returns ``(ids [U], rows [U, d])``
    in ascending id order; within an id the entries are summed in position order."""
    n, d = keys.shape[0], emb.shape[1]
    low = (np.int64(1) << shift) - 1
    count, prev = 0, np.int64(-1)
    for e in range(n):  # first pass: how many distinct ids (output allocated once)
        i = keys[e] >> shift
        if i != prev:
            count += 1
            prev = i
    ids = np.empty(count, np.int64)
    rows = np.empty((count, d), np.float32)
    u, prev = -1, np.int64(-1)
    for e in range(n):
        i, p = keys[e] >> shift, keys[e] & low
        c, b = coef[p], p // per_row
        if i != prev:
            u += 1
            prev = i
            ids[u] = i
            for j in range(d):
                rows[u, j] = c * emb[b, j]
        else:
            for j in range(d):
                rows[u, j] += c * emb[b, j]
    return ids, rows
