"""Fixed points of the first-label losses on a tiny problem whose answer is known exactly.

One-hot contexts, a handful of labels, and training rows whose first labels follow p(y|c) in
exact proportions, so the empirical p is p itself.  Negative sampling from q has its optimum at
xi* = log p - log q (its predictor xi + log q recovers log p: bias removal), NCE with noise q at
xi* = log p, the full softmax at log p + a constant per context.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmcviz.data.dataset import Dataset
from xmcviz.softmax.trainer import SoftmaxConfig, SoftmaxTrainer, pair_loss

# Counts of each label (columns) in each context (rows): p(y|c) = COUNTS / row sums, all > 0.
COUNTS = np.array([[12, 6, 3, 2, 1],
                   [1, 2, 4, 11, 6],
                   [3, 4, 8, 5, 4]])
REPEAT = 40  # copies of COUNTS in the training set (24 rows per context, 2880 in all)


def _dataset() -> Dataset:
    C, L = COUNTS.shape
    ctx = np.repeat(np.arange(C), COUNTS.sum(1))
    lab = np.concatenate([np.repeat(np.arange(L), COUNTS[c]) for c in range(C)])
    ctx, lab = np.tile(ctx, REPEAT), np.tile(lab, REPEAT)
    n = ctx.size
    X = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), ctx)), shape=(n, C))
    Y = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), lab)), shape=(n, L))
    Xte = sp.identity(C, dtype=np.float32, format="csr")
    Yte = sp.csr_matrix((np.ones(C, np.float32), (np.arange(C), COUNTS.argmax(1))), shape=(C, L))
    return Dataset(X, Y, Xte, Yte, name="fixed-point")


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return _dataset()


def _trainer(ds: Dataset, method: str, **kw) -> SoftmaxTrainer:
    cfg = dict(sampler=method, reg=0.0, batch_size=48, epochs=1, adv_dims=2, device="cpu",
               progress=False, seed=0)
    return SoftmaxTrainer(SoftmaxConfig(**{**cfg, **kw}), dataset=ds)


def _log_p() -> torch.Tensor:
    p = COUNTS / COUNTS.sum(1, keepdims=True)
    return torch.as_tensor(np.log(p), dtype=torch.float64)                   # [C, L]


def _log_q(tr: SoftmaxTrainer) -> torch.Tensor:
    """log q(y | context) [C, L]: the proposal of each context's one-hot row."""
    return tr.proposal.log_prob_all(sp.identity(COUNTS.shape[0], dtype=np.float32, format="csr")).double()


def _fixed_point(tr: SoftmaxTrainer) -> torch.Tensor:
    return _log_p() if tr.config.sampler == "nce" else _log_p() - _log_q(tr)


def _expected_gradient(tr: SoftmaxTrainer, xi: torch.Tensor) -> torch.Tensor:
    """The exact expectation, over the training rows and the negative's draw y' ~ q, of the
    per-context score gradient of the trainer's loss (pair_loss), [C, L]."""
    method, lq = tr.config.sampler, _log_q(tr)
    C, L = COUNTS.shape
    p = torch.as_tensor(COUNTS / COUNTS.sum(1, keepdims=True))
    grad = torch.zeros(C, L, dtype=torch.float64)
    for c in range(C):  # a tiny loop over contexts; each line is vectorised over the labels
        # Every pair (y, y'): the gradient on the positive's score and on the negative's.
        pairs = torch.stack([xi[c], xi[c]], 1)
        _, g = pair_loss(pairs, torch.stack([lq[c], lq[c]], 1), method, tr.config.reg)
        grad[c] = p[c] * g[:, 0] + lq[c].exp() * g[:, 1]
    return grad


@pytest.mark.parametrize("method", ["uniform", "frequency", "adversarial", "nce"])
def test_expected_gradient_vanishes_at_the_fixed_point(ds, method):
    tr = _trainer(ds, method)
    xi = _fixed_point(tr)
    assert _expected_gradient(tr, xi).abs().max() < 1e-12
    # Not at the other method's point: xi = log p for negative sampling (no bias removal; for
    # uniform q a shift by log L, which the sigmoid losses do not ignore), log p - log q for NCE.
    wrong = _log_p() - _log_q(tr) if method == "nce" else _log_p()
    assert _expected_gradient(tr, wrong).abs().max() > 1e-2


def test_the_regulariser_moves_the_adversarial_fixed_point(ds):
    tr = _trainer(ds, "adversarial", reg=0.05)
    assert _expected_gradient(tr, _fixed_point(tr)).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["frequency", "adversarial", "nce", "full"])
def test_trained_scores_reach_the_fixed_point(ds, method):
    """The trainer's own Adagrad steps, over enough epochs, bring the scores of every context
    to the fixed point: the predictor's softmax equals p, and NCE's scores are log p itself
    (self-normalised)."""
    tr = _trainer(ds, method, lr=0.5, epochs=30)
    rec = tr.train()
    C = COUNTS.shape[0]
    xi = (tr.W.T[:C] + tr.b).double()                                      # the one-hot rows
    pred = xi if method in ("nce", "full") else xi + _log_q(tr)
    p = _log_p().exp()
    torch.testing.assert_close(torch.softmax(pred, 1), p, atol=0.03, rtol=0)
    if method != "full":  # the full softmax's scores are free up to a constant per context
        torch.testing.assert_close(xi, _fixed_point(tr), atol=0.25, rtol=0)
    assert rec["acc"] == 1.0  # every context's most likely label
