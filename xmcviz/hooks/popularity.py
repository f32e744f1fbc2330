"""NegativePopularity: how popular (frequent in the training data) the labels drawn as negatives are.

A hard-negative sampler that keeps drawing the most frequent training labels is more likely
drawing *missing positives* of those labels than genuinely wrong ones.  This hook shows it
cheaply at any L: each label gets, once, its training-frequency rank (1 = the most frequent
label) and its class by positive mass (``head``: the most frequent labels holding the first
third of all training positives, ``torso``: the next third, ``tail``: the rest).  Every step
adds the batch's negatives, by source, and the batch's positives (for comparison) to a
histogram over log-spaced rank bins (``BINS_PER_OCTAVE`` bins per doubling of the rank).
Nothing is stored per label per step: a window's record is a few dozen integers per source.

Windows are closed as in the ``freq`` hook: every ``window`` steps (``kind`` = ``steps``) and
at each sampler refresh (``kind`` = ``refresh``: one record per refresh interval).

Files: ``hooks/popularity.jsonl``, one record per window and source (``source`` is a sampler
source name, or ``positives``): ``draws``, ``hist`` (counts per rank bin; bin ``b`` holds ranks
in [2^(b/k), 2^((b+1)/k)) with k = ``bins_per_octave``), ``median_freq_rank`` (interpolated
within its bin), ``head`` / ``torso`` / ``tail`` (shares of the draws).  ``hooks/popularity.npy``
holds each label's training-frequency rank (int32, written once), so a reader can name the
labels involved (``xmcviz.notebook.dynamics``).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..samplers.base import SOURCE_NAMES
from ..validation import check_int
from .base import RunInfo, StepContext
from .storage import atomic_write_bytes
from .windows import WindowedHook

BINS_PER_OCTAVE = 4
CLASSES = ("head", "torso", "tail")
POSITIVES = "positives"


def frequency_ranks(Y: sp.spmatrix, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Each label's training-frequency rank (1 = most frequent; ties broken by label id) and its
    class (0 head, 1 torso, 2 tail) by cumulative share of all positives (thirds)."""
    counts = np.bincount(sp.csr_matrix(Y).indices, minlength=num_labels)[:num_labels]
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(num_labels, dtype=np.int64)
    rank[order] = np.arange(1, num_labels + 1)
    total = max(int(counts.sum()), 1)
    mass_before = (np.cumsum(counts[order]) - counts[order]) / total  # share held by more frequent labels
    cls = np.empty(num_labels, dtype=np.int64)
    cls[order] = np.minimum((mass_before * 3).astype(np.int64), 2)
    return rank, cls


def rank_bin(rank: np.ndarray | torch.Tensor, bins_per_octave: int = BINS_PER_OCTAVE):
    """Log-spaced bin of a 1-based rank: floor(k log2 rank)."""
    if isinstance(rank, torch.Tensor):
        return torch.floor(bins_per_octave * torch.log2(rank.double())).long()
    return np.floor(bins_per_octave * np.log2(np.asarray(rank, dtype=np.float64))).astype(np.int64)


def median_from_hist(hist: np.ndarray, bins_per_octave: int = BINS_PER_OCTAVE) -> float:
    """The median rank of a log-bin histogram, interpolated geometrically within its bin."""
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        return float("nan")
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, total / 2))
    before = cum[b] - hist[b]
    frac = (total / 2 - before) / hist[b]
    return float(2.0 ** ((b + frac) / bins_per_octave))


class NegativePopularity(WindowedHook):
    """Histogram the training-frequency ranks of negatives (by source) and positives per window."""

    name = "popularity"

    def __init__(self, every: int = 1, window: int = 50, by_refresh: bool = True,
                 bins_per_octave: int = BINS_PER_OCTAVE) -> None:
        super().__init__(every, window, by_refresh)
        self.bins_per_octave = check_int("bins_per_octave", bins_per_octave, 1, 64)

    def on_train_start(self, run: RunInfo) -> None:
        super().on_train_start(run)
        Y = getattr(run.dataset, "Y_train", None)
        if Y is None:
            raise ValueError("the popularity hook needs the training labels (RunInfo.dataset.Y_train)")
        rank, cls = frequency_ranks(Y, run.num_labels)
        self.num_bins = int(rank_bin(np.array([run.num_labels]), self.bins_per_octave)[0]) + 1
        # One code per label: bin * 3 + class, so one bincount fills both summaries.
        code = rank_bin(rank, self.bins_per_octave) * 3 + cls
        self._code = torch.as_tensor(code, dtype=torch.int64, device=run.device)
        self._groups = len(SOURCE_NAMES) + 1  # the sources, then the positives
        if run.run_dir is not None:
            atomic_write_bytes(run.run_dir / "hooks" / f"{self.name}.npy",
                               _npy_bytes(rank.astype(np.int32)))

    def new_window(self) -> dict:
        return {"counts": torch.zeros(self._groups * self.num_bins * 3, dtype=torch.int64,
                                      device=self._code.device)}

    @torch.no_grad()
    def before_update(self, ctx: StepContext) -> None:
        windows = self.open_windows(ctx)
        neg, pos = ctx.negatives, ctx.positives
        width = self.num_bins * 3
        size = self._groups * width
        # Entries out of the loss go to one extra slot (``size``), dropped below: masking by
        # index is cheaper than selecting with a boolean mask.
        neg_flat = torch.where(neg.mask, neg.source.long() * width + self._code[neg.ids], size)
        pos_flat = torch.where(pos.mask, self._code[pos.ids] + (self._groups - 1) * width, size)
        step_counts = torch.bincount(torch.cat([neg_flat.view(-1), pos_flat.view(-1)]),
                                     minlength=size + 1)[:size]
        for win in windows:
            win["counts"] += step_counts

    def write_window(self, win: dict, base: dict) -> bool:
        counts = win["counts"].view(self._groups, self.num_bins, 3).cpu().numpy()
        if counts[:-1].sum() == 0:  # no negative in the loss (the positives alone say nothing)
            return False
        base = {**base, "bins_per_octave": self.bins_per_octave}
        names = list(SOURCE_NAMES) + [POSITIVES]
        for g in range(self._groups):
            c = counts[g]
            draws = int(c.sum())
            if draws == 0:
                continue
            hist = c.sum(1)
            by_class = c.sum(0) / draws
            self.emit({**base, "source": names[g], "draws": draws,
                       "median_freq_rank": median_from_hist(hist, self.bins_per_octave),
                       **{k: float(v) for k, v in zip(CLASSES, by_class)},
                       "hist": hist.tolist()})
        return True


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def read_frequency_ranks(run_dir) -> np.ndarray | None:
    """The per-label training-frequency ranks a run's popularity hook wrote (None if absent)."""
    p = Path(run_dir) / "hooks" / "popularity.npy"
    return np.load(p) if p.exists() else None


__all__ = ["NegativePopularity", "frequency_ranks", "rank_bin", "median_from_hist",
           "read_frequency_ranks", "BINS_PER_OCTAVE", "CLASSES", "POSITIVES"]
