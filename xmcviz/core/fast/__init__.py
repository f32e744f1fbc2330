"""Fast paths of the training core, behind one switch.

Every algorithm of a training step has a short reference implementation in plain torch where
it is defined (:mod:`xmcviz.core.models`, :mod:`xmcviz.core.optim`,
:mod:`xmcviz.samplers.ops`, :mod:`xmcviz.samplers.mips`).  This package holds the faster
versions of the same arithmetic, tested equal to the references (``tests/test_fast_paths.py``):

* :mod:`.score`: fused gather + score autograd Functions for ``XMCModel.score``;
* :mod:`.cpu_kernels` (numba): the row gradient of ``W`` and the ``RowSparseAdam`` step;
* :mod:`.sampling`: numpy versions of the samplers' batched ops on the CPU.

Why they exist: at large L the rows a step touches are scattered over matrices far larger
than the caches, and on the CPU many small torch ops cost more in dispatch than in
arithmetic; the fast paths make fewer passes over memory and fewer calls.

The switch: :func:`enabled`, read on every call, so it can be flipped at run time.
``XMCVIZ_FAST=0`` in the environment runs the references everywhere; ``XMCVIZ_NUMBA=0``
turns off only the numba kernels (the other fast paths stay on); :func:`reference` runs the
references inside a ``with`` block (for tests and comparisons).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["enabled", "reference"]

# Set by reference(): overrides the environment while its block runs.
_forced: bool | None = None


def enabled() -> bool:
    """True when the fast paths may run: ``XMCVIZ_FAST`` is not ``0`` and no
    :func:`reference` block is active."""
    if _forced is not None:
        return _forced
    return os.environ.get("XMCVIZ_FAST", "1") != "0"


@contextlib.contextmanager
def reference() -> Iterator[None]:
    """Run the reference implementations (no fast path) inside the ``with`` block.

    The switch is process-wide: code in other threads sees it too while the block runs."""
    global _forced
    before, _forced = _forced, False
    try:
        yield
    finally:
        _forced = before
