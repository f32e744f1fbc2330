"""MIPS-based negative sampling: MIPS-a (all R from the index) and MIPS-s (k from it, R - k uniform).

The index (:class:`~xmcviz.samplers.faiss_index.MipsIndex`) is built over a
snapshot W^h of the label matrix and refreshed on a schedule: every
``refresh_every`` steps (P), or ``refreshes_per_epoch`` times per epoch (PPE)
at evenly spaced steps.  Between refreshes W keeps moving and W^h goes stale,
which is what the paper's MIPS-a vs MIPS-s comparison is about.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..core import fast
from ..core.fast.sampling import INT32_SAFE, mips_negatives_np
from ..validation import check_int
from .base import (DEFAULT_K, SOURCE_MIPS, SOURCE_UNIFORM, Negatives, NegativeSampler, Positives,
                   SamplerEnv)
from .faiss_index import MipsIndex, default_clusters
from .ops import (PAD, first_k_negatives, first_occurrence, positives_on, sorted_positive_table,
                  raw_draws, uniform_excluding)

DEFAULT_NPROBE = 16

if TYPE_CHECKING:
    from ..core.config import TrainConfig


def default_nprobe(clusters: int) -> int:
    """tau = min(16, K).

    The paper uses tau = 64 with K = sqrt(L) ~ 600-800 (about a tenth of the
    clusters) at 0.3-0.7M labels, on a GPU.  The problems this library runs
    on a CPU have L <= ~100K (K <= ~300), where 16 probes reach a similar
    share of the clusters and keep a query at O(16 sqrt(L) d)."""
    return min(DEFAULT_NPROBE, clusters)


def assemble_negatives(candidates: torch.Tensor, positives: Positives, k: int,
                       num_negatives: int, num_labels: int,
                       generator: torch.Generator | None = None,
                       table: torch.Tensor | None = None) -> Negatives:
    """MIPS-a / MIPS-s negatives from ranked search results, for the whole batch at once.

    ``candidates`` [B, n]: label ids best first (-1: no result).  Per row: the first ``k``
    that are not positives (``SOURCE_MIPS``, ``mask`` False where the row had fewer), then
    ``num_negatives - k`` uniform negatives (``SOURCE_UNIFORM``); a label repeating an
    earlier one of its row is masked (the search results themselves hold each label at
    most once, as an IVF search returns them).  ``table``: the rows' :func:`sorted_positive_table`
    when the caller already has it.  No Python loop over rows.

    On the CPU, MIPS-s takes a numpy version of the same steps
    (:func:`xmcviz.core.fast.sampling.mips_negatives_np`) when the fast paths are on: the
    same negatives from the same generator state.
    """
    device = candidates.device
    pos = positives_on(positives, device)
    table = sorted_positive_table(pos)[0] if table is None else table.to(device)
    rest = num_negatives - k
    if fast.enabled() and device.type == "cpu" and rest > 0 and num_labels < INT32_SAFE:
        return _assemble_fast(candidates, table, k, num_negatives, num_labels, generator)
    ids, ok = first_k_negatives(candidates, table, k)
    if rest > 0:
        uni, uni_ok = uniform_excluding(pos, num_labels, rest, generator, device, table=table)
        ids, ok = torch.cat([ids, uni], dim=1), torch.cat([ok, uni_ok], dim=1)
        mask = first_occurrence(ids, ok)
    else:
        mask = ok  # one search returns each label at most once: nothing to de-duplicate
    source = torch.full(ids.shape, SOURCE_UNIFORM, dtype=torch.uint8, device=device)
    source[:, :k] = SOURCE_MIPS
    return Negatives(ids, mask, source)


def _assemble_fast(candidates: torch.Tensor, table: torch.Tensor, k: int, num_negatives: int,
                   num_labels: int, generator: torch.Generator | None) -> Negatives:
    """:func:`assemble_negatives` for MIPS-s on the CPU, in numpy; the uniform draws come
    from ``generator`` exactly as :func:`~xmcviz.samplers.ops.uniform_excluding` takes them."""
    count = (table != PAD).sum(dim=1)
    draws = raw_draws(table.shape[0], num_negatives - k, generator)
    ids, mask = mips_negatives_np(candidates.numpy(), table.numpy(), count.numpy(),
                                  draws.numpy(), k, num_negatives, num_labels)
    source = np.full(ids.shape, SOURCE_UNIFORM, np.uint8)
    source[:, :k] = SOURCE_MIPS
    return Negatives(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(source))


class MipsSampler(NegativeSampler):
    """``k`` negatives per row from approximate MIPS over the snapshot, ``R - k`` uniform.

    ``k == R`` is MIPS-a, ``k < R`` MIPS-s.  Per row, the index is queried for
    ``k + m`` labels (m: the most positives of any row in the batch) so that
    dropping the positives still leaves k; the first k non-positive results
    (best first) are kept.  Slots the probed clusters cannot fill are
    returned with ``mask`` False and counted in ``last_unfilled`` /
    ``unfilled_total``.  Columns ``[:k]`` have ``SOURCE_MIPS``, ``[k:]``
    ``SOURCE_UNIFORM``; a uniform draw repeating an earlier label is masked.

    Refresh cadence (exactly one of): ``refresh_every`` = P steps after the
    previous refresh, or ``refreshes_per_epoch`` = PPE refreshes per epoch at
    steps ``e * S + floor(i * S / PPE)``, i < PPE, with S the steps per epoch
    (:meth:`set_steps_per_epoch`; global steps count from 0).  Default: one
    refresh per epoch.  The first call after construction always needs one.

    Refreshes after the first are warm (``warm_iters`` k-means iterations from
    the previous centroids) unless ``warm_refresh`` is False (a cold k-means
    each time, as in the paper).  ``device``: the run's device, where a
    checkpointed index is rebuilt (see :class:`~xmcviz.samplers.faiss_index.MipsIndex`).
    """

    needs_model = True
    options = ("negatives", "mips_k", "clusters", "nprobe", "refresh_every", "refreshes_per_epoch")

    @classmethod
    def from_config(cls, config: "TrainConfig", env: SamplerEnv) -> "MipsSampler":
        """MIPS-s: ``mips_k`` (default 5) negatives from the index, the rest uniform."""
        return cls._build(config, env, DEFAULT_K if config.mips_k is None else config.mips_k)

    @classmethod
    def _build(cls, config: "TrainConfig", env: SamplerEnv, k: int) -> "MipsSampler":
        return cls(env.num_labels, config.negatives, k, clusters=config.clusters,
                   nprobe=config.nprobe, refresh_every=config.refresh_every,
                   refreshes_per_epoch=config.refreshes_per_epoch, seed=config.seed,
                   device=env.device)

    def __init__(self, num_labels: int, num_negatives: int, k: int, *,
                 clusters: int | None = None, nprobe: int | None = None,
                 refresh_every: int | None = None, refreshes_per_epoch: int | None = None,
                 niter: int = 10, warm_iters: int = 1, warm_refresh: bool = True,
                 seed: int = 0, use_gpu: bool | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__(num_labels, num_negatives)
        self.k = check_int("k", k, 1, self.num_negatives)
        K = default_clusters(self.num_labels) if clusters is None else clusters
        self.clusters = check_int("clusters", K, 1, self.num_labels)
        tau = default_nprobe(self.clusters) if nprobe is None else nprobe
        self.nprobe = check_int("nprobe", tau, 1, self.clusters)
        if refresh_every is not None and refreshes_per_epoch is not None:
            raise ValueError(f"pass only one of refresh_every={refresh_every} and "
                             f"refreshes_per_epoch={refreshes_per_epoch}")
        if refresh_every is None and refreshes_per_epoch is None:
            refreshes_per_epoch = 1
        self.refresh_every = None if refresh_every is None else check_int("refresh_every", refresh_every, 1)
        self.refreshes_per_epoch = (None if refreshes_per_epoch is None
                                    else check_int("refreshes_per_epoch", refreshes_per_epoch, 1))
        self.warm_refresh = bool(warm_refresh)
        # ``device``: the run's device, where a checkpointed index is rebuilt on resume.
        self.index = MipsIndex(self.clusters, self.nprobe, niter=niter, warm_iters=warm_iters,
                               seed=seed, use_gpu=use_gpu, device=device)
        self.name = "mips-a" if self.k == self.num_negatives else "mips-s"
        self.refreshes = 0
        self.last_unfilled = 0  # MIPS slots left empty in the last batch
        self.unfilled_total = 0

    # -- schedule -------------------------------------------------------
    def _steps(self) -> int:
        if self.steps_per_epoch is None:
            raise RuntimeError("refreshes_per_epoch needs the epoch length: call set_steps_per_epoch() first")
        return self.steps_per_epoch

    def _last_point(self, step: int) -> int:
        """The latest scheduled refresh step <= ``step`` (PPE cadence)."""
        S, n = self._steps(), self.refreshes_per_epoch
        start, pos = (step // S) * S, step % S
        # Largest i < n with floor(i * S / n) <= pos  <=>  i * S < (pos + 1) * n.
        i = min(n - 1, ((pos + 1) * n - 1) // S)
        return start + (i * S) // n

    def _next_point(self, step: int) -> int:
        """The first scheduled refresh step > ``step`` (PPE cadence)."""
        S, n = self._steps(), self.refreshes_per_epoch
        start, pos = (step // S) * S, step % S
        # Smallest i with floor(i * S / n) > pos  <=>  i * S >= (pos + 1) * n.
        i = ((pos + 1) * n + S - 1) // S
        return start + (i * S) // n if i < n else start + S

    def refresh_due(self, step: int, epoch: int) -> bool:
        last = self.last_refresh_step
        if last is None or not self.index.is_built or step < last:
            return True
        if self.refresh_every is not None:
            return step - last >= self.refresh_every
        return self._last_point(step) > last

    def refresh_interval(self) -> int | None:
        """Steps from the last refresh (or step 0) to the next scheduled one."""
        if self.refresh_every is not None:
            return self.refresh_every
        if self.steps_per_epoch is None:
            return None
        start = 0 if self.last_refresh_step is None else self.last_refresh_step
        return self._next_point(start) - start

    def refresh(self, W: torch.Tensor, step: int, epoch: int, *,
                bias: torch.Tensor | None = None) -> dict:
        """Snapshot ``W`` (and ``bias``) and rebuild the index: cold the first time,
        warm afterwards (unless ``warm_refresh`` is False)."""
        if W.shape[0] != self.num_labels:
            raise ValueError(f"W has {W.shape[0]} rows, expected num_labels={self.num_labels}")
        if self.warm_refresh:
            info = self.index.refresh(W, bias)
        else:
            info = self.index.build(W, bias)
        self.last_refresh_step = int(step)
        self.refreshes += 1
        return {"sampler": self.name, "step": int(step), "epoch": int(epoch),
                "seconds": info["seconds"], "warm": info["kind"] == "warm",
                "kmeans_seconds": info["kmeans_seconds"], "add_seconds": info["add_seconds"],
                "clusters": info["clusters"], "nprobe": info["nprobe"], "gpu": info["gpu"],
                "interval": self.refresh_interval(), "refreshes": self.refreshes}

    # -- sampling -------------------------------------------------------
    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Negatives:
        """MIPS negatives from the snapshot (``W``/``bias`` of the live model are not used)."""
        if not self.index.is_built:
            raise RuntimeError("the MIPS index is not built: call refresh(W, step, epoch) first "
                               "(refresh_due() is True before the first sample)")
        pos = positives_on(positives, emb.device)
        table, count = sorted_positive_table(pos)
        most = int(count.max()) if count.numel() else 0
        width = min(self.k + most, self.num_labels)
        _, cand = self.index.search(emb, width)
        neg = assemble_negatives(cand, pos, self.k, self.num_negatives, self.num_labels,
                                 generator, table=table)
        self.last_unfilled = int((~neg.mask[:, :self.k]).sum())
        self.unfilled_total += self.last_unfilled
        return neg

    # -- checkpointing --------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(index=self.index.state_dict(), refreshes=self.refreshes,
                     unfilled_total=self.unfilled_total)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.index.load_state_dict(state["index"])
        self.refreshes = int(state.get("refreshes", 0))
        self.unfilled_total = int(state.get("unfilled_total", 0))


class MipsAllSampler(MipsSampler):
    """MIPS-a: every one of the R negatives from the index (``k = R``, so no ``mips_k``)."""

    options = tuple(o for o in MipsSampler.options if o != "mips_k")

    @classmethod
    def from_config(cls, config: "TrainConfig", env: SamplerEnv) -> "MipsAllSampler":
        return cls._build(config, env, config.negatives)
