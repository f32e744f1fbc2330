"""Signal-to-noise ratio of the negative-sampling gradient (Bamler & Mandt, ICLR 2020).

The claim to show: the closer the proposal q(y'|x) is to the data distribution,
the less noisy the stochastic gradient (adversarial > frequency > uniform).
This module measures it on a fixed probe batch for a linear model with scores
``xi_y(x) = x . W[y] + b[y]`` (W [L, D], b [L]) and the loss of docs/background.md, section
"First-label softmax setting",
one negative y' ~ q(.|x_i) per positive (x_i, y_i), averaged over the batch:

    l = (1/B) sum_i [ -log sigma(xi_{y_i}(x_i)) - log sigma(-xi_{y'_i}(x_i))
                      + reg ((xi_{y_i} + log q(y_i|x_i))^2 + (xi_{y'_i} + log q(y'_i|x_i))^2) ].

Each of S independent draws of the negatives gives a gradient G_s with respect
to every parameter (all entries of W and b).  Reported, with
``Gbar = (1/S) sum_s G_s``:

- ``mean_sq_norm`` = ||Gbar||^2 (squared Frobenius norm over all parameters);
- ``total_variance`` = trace of the sample covariance of the G_s,
  (1/(S-1)) sum_s ||G_s - Gbar||^2 (sum of the per-parameter variances);
- ``snr`` = mean_sq_norm / total_variance (inf when the variance is 0);
- ``snr_debiased`` uses ||Gbar||^2 - total_variance / S, an unbiased estimate
  of the squared norm of the true mean (||Gbar||^2 is inflated by trace/S).

Nothing of size L x D is formed: every G_s is a sum of rank-one terms
``coef * e_label x_i^T``, so inner products reduce to the probe's Gram matrix
``K = x x^T (+1 for the bias)``.  Cost O(S B^2 + U B^2) for U distinct labels
drawn, vectorised over the probe and the draws (chunked for memory).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..validation import check_float, check_int

#: ``proposal(num_draws, generator) -> (ids int64 [S, B], log_q [S, B])``: one
#: negative per probe row per draw, with its log-probability under q (a
#: :class:`xmcviz.softmax.proposals.Proposal` becomes one through
#: :func:`xmcviz.softmax.snr.as_snr_proposal`).
DrawFn = Callable[[int, "torch.Generator | None"], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass
class GradientSNR:
    """Result of :func:`gradient_snr` (see the module docstring for definitions)."""

    mean_sq_norm: float
    total_variance: float
    snr: float
    snr_debiased: float
    num_draws: int
    batch_size: int

    @property
    def mean_norm(self) -> float:
        return math.sqrt(self.mean_sq_norm)

    def as_dict(self) -> dict:
        return {"mean_sq_norm": self.mean_sq_norm, "mean_norm": self.mean_norm,
                "total_variance": self.total_variance, "snr": self.snr,
                "snr_debiased": self.snr_debiased, "num_draws": self.num_draws,
                "batch_size": self.batch_size}


def _sq_norm(labels: torch.Tensor, rows: torch.Tensor, coef: torch.Tensor, K: torch.Tensor,
             chunk: int = 4096) -> torch.Tensor:
    """||sum_e coef_e e_{labels_e} x_{rows_e}^T||^2 with K = Gram matrix of the x's."""
    uniq, inv = torch.unique(labels, return_inverse=True)
    B = K.shape[0]
    total = K.new_zeros(())
    for u0 in range(0, uniq.shape[0], chunk):  # dense [labels, B] coefficient blocks
        sel = (inv >= u0) & (inv < u0 + chunk)
        n = min(chunk, uniq.shape[0] - u0)
        C = K.new_zeros(n * B).index_add_(0, (inv[sel] - u0) * B + rows[sel], coef[sel]).view(n, B)
        total = total + ((C @ K) * C).sum()
    return total


def gradient_snr(W: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor,
                 proposal: DrawFn, num_draws: int, *, reg: float = 0.0,
                 log_q_pos: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 memory_elems: int = 1 << 23, debiased_params: bool = False) -> GradientSNR:
    """Estimate the gradient SNR of the negative-sampling loss on a probe batch.

    ``W`` [L, D], ``b`` [L] or None (no bias parameters); ``x`` [B, D] dense
    probe inputs; ``y`` int64 [B] one positive label per row; ``proposal``
    draws the negatives (see :data:`DrawFn`); ``num_draws`` = S >= 2.
    ``reg`` is the regulariser weight lambda (docs/background.md, section "First-label softmax
    setting"); when > 0 the
    positives' ``log_q_pos`` [B] = log q(y_i|x_i) is required.  Computed in
    float64; ``memory_elems`` bounds the temporary blocks.

    ``debiased_params=True``: ``W``, ``b`` parametrise the *bias-removed* scores
    ``s = x . W[y] + b[y]`` and the loss sees ``xi = s - log q(y|x)`` (needs
    ``log_q_pos``).  Then every proposal is compared at the same predictive model
    softmax(s) (e.g. W = 0: the uniform prediction), which is the comparison of
    Bamler & Mandt's SNR argument; with the default, all proposals share the raw
    scores xi instead, and a proposal close to the data distribution sits near its
    own optimum (small mean gradient) at xi = 0.
    """
    S = check_int("num_draws", num_draws, 2)
    reg = check_float("reg", reg, 0.0)
    if x.ndim != 2 or W.ndim != 2 or W.shape[1] != x.shape[1]:
        raise ValueError(f"need W [L, D] and x [B, D], got {tuple(W.shape)} and {tuple(x.shape)}")
    B, L = x.shape[0], W.shape[0]
    if y.shape != (B,):
        raise ValueError(f"y must be [B={B}], got shape {tuple(y.shape)}")
    if (reg > 0 or debiased_params) and log_q_pos is None:
        raise ValueError(f"{'reg > 0' if reg > 0 else 'debiased_params=True'} needs log_q_pos "
                         f"(log q(y_i|x_i) of the positives)")
    dt = torch.float64
    x = (x.to_dense() if x.layout != torch.strided else x).to(dt)
    W = W.to(dt)
    bias = b.to(dt) if b is not None else None
    K = x @ x.T + (1.0 if bias is not None else 0.0)  # the bias acts on a constant feature 1

    def scores(ids: torch.Tensor) -> torch.Tensor:  # xi [..., B] of labels ids [..., B]
        s = torch.einsum("...bd,bd->...b", W[ids], x)
        return s if bias is None else s + bias[ids]

    y = y.to(x.device)
    xi = scores(y)
    if debiased_params:
        xi = xi - log_q_pos.to(dt)
    c_pos = torch.sigmoid(xi) - 1
    if reg > 0:
        c_pos = c_pos + 2 * reg * (xi + log_q_pos.to(dt))

    ids, log_q = proposal(S, generator)
    if ids.shape != (S, B) or log_q.shape != (S, B):
        raise ValueError(f"proposal must return ids and log_q of shape (S, B) = {(S, B)}, "
                         f"got {tuple(ids.shape)} and {tuple(log_q.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= L):
        raise ValueError(f"proposal returned label ids out of range: allowed [0, {L - 1}]")
    ids, log_q = ids.to(x.device), log_q.to(x.device, dt)
    c_neg = torch.empty((S, B), dtype=dt, device=x.device)
    step = max(1, memory_elems // max(1, B * x.shape[1]))
    for s0 in range(0, S, step):
        xs = scores(ids[s0:s0 + step])
        if debiased_params:
            xs = xs - log_q[s0:s0 + step]
        c = torch.sigmoid(xs)
        if reg > 0:
            c = c + 2 * reg * (xs + log_q[s0:s0 + step])
        c_neg[s0:s0 + step] = c

    # sum_s ||G_neg_s||^2: same-label pairs within one draw, weighted by K.
    per_draw = x.new_zeros(())
    step = max(1, memory_elems // (B * B))
    for s0 in range(0, S, step):
        i, c = ids[s0:s0 + step], c_neg[s0:s0 + step]
        same = (i[:, :, None] == i[:, None, :]).to(dt)
        per_draw = per_draw + (same * c[:, :, None] * c[:, None, :] * K).sum()
    per_draw = per_draw / B ** 2

    rows = torch.arange(B, device=x.device)
    neg_rows = rows.expand(S, B).reshape(-1)
    mean_neg_sq = _sq_norm(ids.reshape(-1), neg_rows, c_neg.reshape(-1) / (S * B), K)
    mean_sq = _sq_norm(torch.cat([y, ids.reshape(-1)]), torch.cat([rows, neg_rows]),
                       torch.cat([c_pos / B, c_neg.reshape(-1) / (S * B)]), K)
    # The positive part does not depend on the draw: the variance is that of the negative part.
    var = float(max((per_draw - S * mean_neg_sq).item(), 0.0)) / (S - 1)
    mean_sq = float(mean_sq.item())
    snr = mean_sq / var if var > 0 else math.inf
    snr_deb = max(mean_sq - var / S, 0.0) / var if var > 0 else math.inf
    return GradientSNR(mean_sq, var, snr, snr_deb, S, B)


# -- proposals ---------------------------------------------------------------
def categorical_proposal(log_probs: torch.Tensor) -> DrawFn:
    """q(y'|x_i) = softmax(log_probs[i]) for a [B, L] table (data distribution, frequency, ...)."""
    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must be [B, L], got shape {tuple(log_probs.shape)}")
    logp = torch.log_softmax(log_probs.to(torch.float64), dim=1)
    probs = logp.exp()

    def draw(S: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.multinomial(probs, S, replacement=True, generator=generator).T.contiguous()
        return ids, logp.gather(1, ids.T).T
    return draw

