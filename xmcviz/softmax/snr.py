"""Gradient SNR of uniform, frequency and adversarial negatives on one probe batch.

Bamler & Mandt's argument for the adversarial sampler: the closer the proposal q is to the
data distribution, the higher the signal-to-noise ratio of the sampled gradient.  This
module applies :func:`xmcviz.softmax.gradient_snr.gradient_snr` (exact mean and variance
estimates over ``num_draws`` draws, the loss of docs/background.md, section "First-label softmax setting", ``reg`` for the adversarial
proposal only) to the three proposals of a :class:`~xmcviz.softmax.trainer.SoftmaxTrainer`'s data,
at given parameters (default: the trainer's current ones).
"""
from __future__ import annotations

import numpy as np
import torch

from .gradient_snr import DrawFn, gradient_snr
from ..validation import check_int
from .proposals import FrequencyProposal, Proposal, TreeProposal, UniformProposal


def as_snr_proposal(prop: Proposal, rows: torch.Tensor) -> DrawFn:
    """Adapt a :class:`Proposal` on the training rows ``rows`` [B] to gradient_snr's
    ``draw(S, generator) -> (ids [S, B], log_q float64 [S, B])`` (:data:`~xmcviz.softmax.gradient_snr.DrawFn`)."""
    def draw(S: int, generator: torch.Generator | None = None):
        ids, lq = prop.sample(rows.repeat(S), generator)  # row-major: draw s holds rows[s*B:(s+1)*B]
        B = rows.shape[0]
        return ids.view(S, B), lq.view(S, B).double()
    return draw


def snr_comparison(trainer, *, W: torch.Tensor | None = None, b: torch.Tensor | None = None,
                   probe_size: int = 256, num_draws: int = 64, seed: int = 0,
                   proposals: dict[str, Proposal] | None = None,
                   debiased_params: bool = False) -> list[dict]:
    """One record per proposal (``sampler``, ``snr``, ``snr_debiased``, ``mean_sq_norm``,
    ``total_variance``, ``reg``) at parameters ``W`` [L, D], ``b`` [L] (default: the trainer's).

    The probe is ``probe_size`` labelled training rows chosen with ``seed``; the same probe,
    parameters and seed serve every proposal.  ``proposals`` defaults to uniform, frequency
    (first-label counts) and the trainer's tree when it has one (adversarial / NCE runs).
    ``debiased_params``: ``W``, ``b`` are the bias-removed model ``s = xi + log q``, shared by
    all proposals (see :func:`~xmcviz.softmax.gradient_snr.gradient_snr`).
    """
    probe_size = check_int("probe_size", probe_size, 1)
    check_int("num_draws", num_draws, 2)
    W = trainer.W if W is None else W
    b = trainer.b if b is None else b
    if proposals is None:
        L, dev = trainer.num_labels, trainer.device
        proposals = {"uniform": UniformProposal(L, dev),
                     "frequency": FrequencyProposal(np.bincount(trainer.train_y, minlength=L), dev)}
        if isinstance(trainer.proposal, TreeProposal):
            proposals["adversarial"] = trainer.proposal
    rng = np.random.default_rng(seed)
    pick = rng.choice(trainer.train_rows.size, size=min(probe_size, trainer.train_rows.size), replace=False)
    rows = torch.as_tensor(np.sort(trainer.train_rows[pick]), device=trainer.device)
    x = torch.as_tensor(trainer.X_train[rows.cpu().numpy()].toarray(), device=trainer.device)
    y = trainer.y_of_row[rows]
    out = []
    for name, prop in proposals.items():
        reg = float(trainer.config.reg) if name == "adversarial" else 0.0
        lq_pos = prop.log_prob(rows, y).double() if reg > 0 or debiased_params else None
        res = gradient_snr(W, b, x, y, as_snr_proposal(prop, rows), num_draws, reg=reg,
                           log_q_pos=lq_pos, debiased_params=debiased_params,
                           generator=torch.Generator(device=trainer.device).manual_seed(seed))
        out.append({"sampler": name, "reg": reg, "debiased_params": debiased_params, **res.as_dict()})
    return out
