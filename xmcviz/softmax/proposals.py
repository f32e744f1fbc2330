"""Proposal distributions q(y|x) of the first-label softmax setting (one negative per row).

Each proposal draws one label per training row and gives log q for any labels
and rows (training rows by their dataset row id, other rows by their features):

- ``uniform``: q = 1/L;
- ``frequency``: q(y) proportional to the training count of y as a first label, plus one
  (add-one smoothing keeps every label reachable and log q finite);
- ``tree``: the adversarial auxiliary model p_n(y|x) (PCA + balanced label tree, fitted on
  the first labels), used by both the adversarial sampler and NCE.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from ..validation import check_int


class Proposal:
    """Base class: ``sample`` one label per training row, ``log_prob`` / ``log_prob_all``."""

    name = "proposal"

    def __init__(self, num_labels: int, device: torch.device | str = "cpu") -> None:
        self.num_labels = check_int("num_labels", num_labels, 2)
        self.device = torch.device(device)

    def sample(self, rows: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """One label per training row id in ``rows`` [B]: ``(ids int64 [B], log_q float32 [B])``."""
        raise NotImplementedError

    def log_prob(self, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log q(labels[i] | x_rows[i]) for training rows, float32 [B]."""
        raise NotImplementedError

    def log_prob_all(self, X: sp.csr_matrix) -> torch.Tensor:
        """log q(y|x) of every label for the rows of ``X`` (any rows, by features), [n, L]."""
        raise NotImplementedError


class UniformProposal(Proposal):
    name = "uniform"

    def sample(self, rows, generator=None):
        ids = torch.randint(0, self.num_labels, (rows.shape[0],), generator=generator, device=self.device)
        return ids, torch.full(ids.shape, -math.log(self.num_labels), device=self.device)

    def log_prob(self, rows, labels):
        return torch.full(labels.shape, -math.log(self.num_labels), device=self.device)

    def log_prob_all(self, X):
        return torch.full((X.shape[0], self.num_labels), -math.log(self.num_labels), device=self.device)


class FrequencyProposal(Proposal):
    """q(y) = (count_y + 1) / (N + L), independent of x."""

    name = "frequency"

    def __init__(self, counts: np.ndarray, device: torch.device | str = "cpu") -> None:
        counts = np.asarray(counts, dtype=np.float64).reshape(-1)
        super().__init__(counts.shape[0], device)
        if (counts < 0).any():
            raise ValueError("counts must be >= 0")
        p = (counts + 1.0) / (counts.sum() + counts.shape[0])
        self.probs = torch.as_tensor(p, dtype=torch.float64, device=self.device)
        self.logp = torch.log(self.probs).float()

    def sample(self, rows, generator=None):
        ids = torch.multinomial(self.probs, rows.shape[0], replacement=True, generator=generator)
        return ids, self.logp[ids]

    def log_prob(self, rows, labels):
        return self.logp[labels]

    def log_prob_all(self, X):
        return self.logp.expand(X.shape[0], -1)


class TreeProposal(Proposal):
    """q = p_n(y|x) of a fitted :class:`~xmcviz.samplers.adversarial.sampler.AdversarialSampler`."""

    name = "tree"

    def __init__(self, sampler) -> None:
        super().__init__(sampler.num_labels, sampler.device)
        self.sampler = sampler

    def sample(self, rows, generator=None):
        ids, lp = self.sampler.tree.sample(self.sampler.z_train[rows], 1, generator=generator)
        return ids[:, 0], lp[:, 0].float()

    def log_prob(self, rows, labels):
        return self.sampler.tree.log_prob(self.sampler.z_train[rows], labels[:, None])[:, 0].float()

    def log_prob_all(self, X):
        return self.sampler.log_pn_all(X).float()
