"""Gradient signal-to-noise estimator (xmcviz.softmax.gradient_snr)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmcviz.samplers.adversarial import SparsePCA, fit_label_tree, training_pairs
from xmcviz.softmax.proposals import TreeProposal, UniformProposal
from xmcviz.softmax.snr import as_snr_proposal
from xmcviz.softmax.gradient_snr import categorical_proposal, gradient_snr
from xmcviz.samplers.adversarial.sampler import AdversarialSampler


def _uniform(num_labels, batch_size):
    """q(y'|x) = 1/L for ``batch_size`` probe rows."""
    return as_snr_proposal(UniformProposal(num_labels), torch.arange(batch_size))


def _brute_force(W, b, x, y, ids, log_q, log_q_pos, reg):
    """Materialise every draw's gradient with autograd; return (||mean||^2, trace cov)."""
    grads = []
    for s in range(ids.shape[0]):
        Wp, bp = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
        xi_p = (x * Wp[y]).sum(1) + bp[y]
        xi_n = (x * Wp[ids[s]]).sum(1) + bp[ids[s]]
        loss = (-torch.nn.functional.logsigmoid(xi_p) - torch.nn.functional.logsigmoid(-xi_n)
                + reg * ((xi_p + log_q_pos) ** 2 + (xi_n + log_q[s]) ** 2)).mean()
        gW, gb = torch.autograd.grad(loss, (Wp, bp))
        grads.append(torch.cat([gW.reshape(-1), gb]))
    G = torch.stack(grads)
    mean = G.mean(0)
    return float((mean ** 2).sum()), float(((G - mean) ** 2).sum() / (G.shape[0] - 1))


def test_matches_autograd_brute_force():
    g = torch.Generator().manual_seed(0)
    L, D, B, S = 7, 5, 6, 40
    W = torch.randn(L, D, generator=g, dtype=torch.float64)
    b = torch.randn(L, generator=g, dtype=torch.float64)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, L, (B,), generator=g)
    y[1] = y[0]  # shared positive labels and (below) negatives hitting positives
    logits = torch.randn(B, L, generator=g, dtype=torch.float64)
    prop = categorical_proposal(logits)
    ids, log_q = prop(S, torch.Generator().manual_seed(5))
    log_q_pos = torch.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    for reg in (0.0, 0.3):
        res = gradient_snr(W, b, x, y, prop, S, reg=reg, log_q_pos=log_q_pos,
                           generator=torch.Generator().manual_seed(5))
        mean_sq, var = _brute_force(W, b, x, y, ids, log_q, log_q_pos, reg)
        assert res.mean_sq_norm == pytest.approx(mean_sq, rel=1e-9)
        assert res.total_variance == pytest.approx(var, rel=1e-9)
        assert res.snr == pytest.approx(mean_sq / var, rel=1e-9)
        assert res.snr_debiased == pytest.approx((mean_sq - var / S) / var, rel=1e-9)
    # Without bias parameters only W's gradient counts (brute force: a bias frozen at 0).
    res = gradient_snr(W, None, x, y, prop, S, generator=torch.Generator().manual_seed(5))
    Gw = []
    for s in range(S):
        Wp = W.clone().requires_grad_(True)
        loss = (-torch.nn.functional.logsigmoid((x * Wp[y]).sum(1))
                - torch.nn.functional.logsigmoid(-(x * Wp[ids[s]]).sum(1))).mean()
        Gw.append(torch.autograd.grad(loss, Wp)[0].reshape(-1))
    Gw = torch.stack(Gw)
    assert res.mean_sq_norm == pytest.approx(float((Gw.mean(0) ** 2).sum()), rel=1e-9)
    assert res.total_variance == pytest.approx(float(Gw.var(0).sum()), rel=1e-9)


def test_deterministic_sampler_has_zero_variance():
    g = torch.Generator().manual_seed(1)
    L, D, B = 9, 4, 16
    W, b = torch.randn(L, D, generator=g), torch.randn(L, generator=g)
    x, y = torch.randn(B, D, generator=g), torch.randint(0, L, (B,), generator=g)
    fixed_ids = torch.randint(0, L, (B,), generator=g)

    def fixed(S, generator=None):
        return fixed_ids.expand(S, B).clone(), torch.zeros(S, B)

    res = gradient_snr(W, b, x, y, fixed, 25)
    assert res.total_variance == 0.0 and res.snr == math.inf and res.mean_sq_norm > 0
    noisy = gradient_snr(W, b, x, y, _uniform(L, B), 25, generator=torch.Generator().manual_seed(0))
    assert noisy.total_variance > 0 and math.isfinite(noisy.snr)


def test_data_distribution_beats_uniform():
    """Bamler & Mandt: at the same predictive distribution, a proposal equal to the data
    distribution gives a far less noisy gradient than the uniform one."""
    g = torch.Generator().manual_seed(0)
    C, L, B = 8, 64, 256
    log_p = torch.log_softmax(torch.randn(C, L, generator=g) * 3, 1)  # p_data(y | cluster)
    cluster = torch.randint(0, C, (B,), generator=g)
    x = torch.eye(C)[cluster]  # one-hot inputs: any score table is a linear model
    y = torch.multinomial(log_p.exp()[cluster], 1, generator=g).squeeze(1)
    perturb = torch.randn(C, L, generator=g) * 0.5  # the model is near, not at, its optimum

    def model(log_q):  # optimum of the sampled loss: xi = log p_data - log q (+ perturbation)
        return (log_p - log_q + perturb).T.contiguous(), torch.zeros(L)

    res = {}
    for name, prop, log_q in [("data", categorical_proposal(log_p[cluster]), log_p),
                              ("uniform", _uniform(L, B), torch.full((C, L), -math.log(L)))]:
        W, b = model(log_q)
        res[name] = gradient_snr(W, b, x, y, prop, 300, generator=torch.Generator().manual_seed(1))
    assert res["data"].snr > 5 * res["uniform"].snr, res


def test_tree_proposal_runs_and_validation():
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.random((60, 10)).astype(np.float32))
    lab = np.arange(60) % 5
    Y = sp.csr_matrix((np.ones(60, np.float32), (np.arange(60), lab)), shape=(60, 5))
    pca = SparsePCA.fit(X, 3)
    z = pca.transform_torch(X)
    tree = fit_label_tree(z, *training_pairs(Y), 5)
    W, b = torch.zeros(5, 10), torch.zeros(5)
    x, y = torch.as_tensor(X[:8].toarray()), torch.as_tensor(lab[:8])
    prop = as_snr_proposal(TreeProposal(AdversarialSampler(tree, pca, X, 1)), torch.arange(8))
    res = gradient_snr(W, b, x, y, prop, 20, generator=torch.Generator().manual_seed(0))
    assert res.batch_size == 8 and res.num_draws == 20 and res.total_variance > 0
    with pytest.raises(ValueError, match=r"num_draws=1 is out of range: allowed >= 2"):
        gradient_snr(W, b, x, y, _uniform(5, 8), 1)
    with pytest.raises(ValueError, match="reg > 0 needs log_q_pos"):
        gradient_snr(W, b, x, y, _uniform(5, 8), 4, reg=0.1)
    with pytest.raises(ValueError, match=r"proposal must return ids and log_q of shape \(S, B\)"):
        gradient_snr(W, b, x, y, _uniform(5, 7), 4)
    with pytest.raises(ValueError, match=r"label ids out of range: allowed \[0, 4\]"):
        gradient_snr(W, b, x, y, _uniform(6, 8), 50, generator=torch.Generator().manual_seed(0))


def test_debiased_params_shift_scores_by_log_q():
    """With a constant q (uniform), parameters of the bias-removed model s = xi + log q
    equal raw parameters whose bias is shifted by -log q = +log L."""
    g = torch.Generator().manual_seed(2)
    L, D, B, S = 9, 4, 5, 16
    W = torch.randn(L, D, generator=g, dtype=torch.float64)
    b = torch.randn(L, generator=g, dtype=torch.float64)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, L, (B,), generator=g)
    # log q = -log L as the proposal gives it (float32, like the draws' log q).
    log_q = float(UniformProposal(L).log_prob(y, y)[0])
    lq = torch.full((B,), log_q, dtype=torch.float64)
    for reg in (0.0, 0.2):
        deb = gradient_snr(W, b, x, y, _uniform(L, B), S, reg=reg, log_q_pos=lq,
                           debiased_params=True, generator=torch.Generator().manual_seed(1))
        raw = gradient_snr(W, b - log_q, x, y, _uniform(L, B), S, reg=reg,
                           log_q_pos=lq, generator=torch.Generator().manual_seed(1))
        # reg acts on xi + log q = s in both: raw xi = s - log q with the shifted bias.
        assert deb.mean_sq_norm == pytest.approx(raw.mean_sq_norm, rel=1e-9)
        assert deb.total_variance == pytest.approx(raw.total_variance, rel=1e-9)
    with pytest.raises(ValueError, match="log_q_pos"):
        gradient_snr(W, b, x, y, _uniform(L, B), S, debiased_params=True)
