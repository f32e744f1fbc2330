"""Frequency (unigram) negative sampling: labels drawn in proportion to freq^alpha."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..validation import check_float, check_int
from .base import SOURCE_FREQUENCY, Negatives, NegativeSampler, Positives, SamplerEnv
from .ops import first_occurrence, is_member, positives_on, sorted_positive_table

if TYPE_CHECKING:
    from ..core.config import TrainConfig


class FrequencySampler(NegativeSampler):
    """R labels per row from the empirical label distribution, positives excluded.

    Label j is proposed with probability proportional to
    ``(label_freq[j] + smoothing) ** alpha`` (``alpha`` = 1: the unigram
    distribution; 0.75: word2vec's flattening; 0: uniform over the labels
    with non-zero weight).  Each draw costs O(log L): a binary search of a
    uniform number in the precomputed CDF (``torch.searchsorted``).

    Labels of zero weight (never seen in training, with ``smoothing`` 0) are
    never drawn; at least R labels must have non-zero weight, otherwise a
    ``ValueError`` suggests ``smoothing`` > 0.  Positives are excluded by
    rejection: drawn positives are redrawn, for all rows at once, at most
    ``max_rounds`` times; what is still positive after that (only rows whose
    positives hold most of the mass) is returned with ``mask`` False.  Draws
    are with replacement; repeats within a row get ``mask`` False.
    """

    name = "frequency"

    @classmethod
    def from_config(cls, config: "TrainConfig", env: SamplerEnv) -> "FrequencySampler":
        if env.label_freq is None:
            raise ValueError("sampler 'frequency' needs label_freq (training label counts, length num_labels)")
        return cls(env.num_labels, config.negatives, env.label_freq)

    def __init__(self, num_labels: int, num_negatives: int, label_freq, *, alpha: float = 1.0,
                 smoothing: float = 0.0, max_rounds: int = 8) -> None:
        super().__init__(num_labels, num_negatives)
        self.alpha = check_float("alpha", alpha, 0.0)
        self.smoothing = check_float("smoothing", smoothing, 0.0)
        self.max_rounds = check_int("max_rounds", max_rounds, 0)
        freq = np.asarray(label_freq.cpu() if isinstance(label_freq, torch.Tensor) else label_freq,
                          dtype=np.float64).ravel()
        if freq.shape[0] != self.num_labels:
            raise ValueError(f"label_freq has {freq.shape[0]} entries, expected num_labels={self.num_labels}")
        if not np.all(np.isfinite(freq)) or (freq < 0).any():
            raise ValueError("label_freq must hold finite non-negative counts")
        freq = freq + self.smoothing
        # where(): with alpha = 0, 0 ** 0 would give unseen labels weight 1.
        weight = np.where(freq > 0, freq ** self.alpha, 0.0)
        nonzero = int((weight > 0).sum())
        if nonzero < self.num_negatives:
            raise ValueError(
                f"only {nonzero} labels have non-zero frequency, fewer than num_negatives="
                f"{self.num_negatives}: pass smoothing > 0 to give unseen labels weight")
        cdf = np.cumsum(weight)
        # Divide by the total (itself a cumsum entry) so the CDF ends at exactly 1.0.
        self._cdf = torch.as_tensor(cdf / cdf[-1], dtype=torch.float64)
        self.probs = torch.as_tensor(weight / cdf[-1], dtype=torch.float64)
        self.last_rejected = 0  # positives still drawn after max_rounds in the last batch

    def _cdf_on(self, device: torch.device) -> torch.Tensor:
        if self._cdf.device != device:
            self._cdf = self._cdf.to(device)  # cached: moved once per device
        return self._cdf

    def draw_unconstrained(self, shape: tuple[int, int], device: torch.device,
                           generator: torch.Generator | None) -> torch.Tensor:
        """Labels drawn i.i.d. from the (smoothed, powered) frequency distribution."""
        cdf = self._cdf_on(device)
        u = torch.rand(shape, dtype=torch.float64, generator=generator, device=device)
        # right=True: label j is hit for u in [cdf[j-1], cdf[j]), empty when weight is 0.
        return torch.searchsorted(cdf, u, right=True).clamp_max(self.num_labels - 1)

    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Negatives:
        device = emb.device
        table, _ = sorted_positive_table(positives_on(positives, device))
        shape = (emb.shape[0], self.num_negatives)
        ids = self.draw_unconstrained(shape, device, generator)
        bad = is_member(ids, table)
        for _ in range(self.max_rounds):
            if not bool(bad.any()):
                break
            # Redraw the whole block (fixed shape, reproducible) and use it where needed.
            ids = torch.where(bad, self.draw_unconstrained(shape, device, generator), ids)
            bad = is_member(ids, table)
        self.last_rejected = int(bad.sum())
        mask = first_occurrence(ids, ~bad)
        source = torch.full(shape, SOURCE_FREQUENCY, dtype=torch.uint8, device=device)
        return Negatives(ids, mask, source)
