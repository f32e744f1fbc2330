"""Adversarial sampler: PCA, label tree (fit, probabilities, sampling) and the sampler contract."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmcviz.samplers.adversarial import LabelTree, SparsePCA, fit_label_tree, newton_step, training_pairs
from xmcviz.samplers.adversarial.tree import _logistic_stats
from xmcviz.samplers.adversarial.sampler import AdversarialSampler, fit_adversarial_sampler
from xmcviz.samplers.base import SOURCE_ADVERSARIAL, Positives

L = 13  # not a power of two: 16 leaves, 3 of them padding
EMPTY = 12  # a label without training rows


def toy_data(seed: int = 0, rows_per_label: int = 30, noise: float = 0.15, multi: float = 0.0):
    """Sparse non-negative rows around one centre per label; label EMPTY gets no rows."""
    rng = np.random.default_rng(seed)
    D = 24
    centres = rng.random((L, D)) * (rng.random((L, D)) < 0.3) * 2.0
    y = np.repeat(np.arange(L - 1), rows_per_label)
    X = np.maximum(centres[y] + noise * rng.standard_normal((y.size, D)), 0.0)
    X[X < 0.05] = 0.0
    rows, cols = [np.arange(y.size)], [y]
    extra = np.flatnonzero(rng.random(y.size) < multi)
    rows.append(extra)
    cols.append((y[extra] + 1 + rng.integers(0, L - 3, extra.size)) % (L - 1))
    r, c = np.concatenate(rows), np.concatenate(cols)
    Y = sp.csr_matrix((np.ones(r.size, np.float32), (r, c)), shape=(y.size, L))
    Y.sum_duplicates()
    Y.data[:] = 1
    return sp.csr_matrix(X.astype(np.float32)), Y, y


@pytest.fixture(scope="module")
def toy():
    X, Y, y = toy_data()
    pca = SparsePCA.fit(X, 4, seed=0)
    z = pca.transform_torch(X)
    r, lab = training_pairs(Y, "all")
    tree = fit_label_tree(z, r, lab, L)
    return X, Y, y, pca, z, tree


@pytest.fixture(scope="module")
def sampler():
    X, Y, _ = toy_data(seed=1, multi=0.5)
    return fit_adversarial_sampler(X, Y, 5, k=4, seed=0), X, Y


# -- PCA ---------------------------------------------------------------------
def test_pca_matches_dense_svd():
    X, _, _ = toy_data(seed=3)
    pca = SparsePCA.fit(X, 4, seed=0)
    A = X.toarray().astype(np.float64)
    A -= A.mean(0)
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    V = pca.components.astype(np.float64)
    assert np.allclose(V.T @ V, np.eye(4), atol=1e-5)
    # Same directions up to sign (the top singular values are well separated here).
    assert np.all(np.abs(np.sum(V * Vt[:4].T, axis=0)) > 0.999), s[:6]
    assert np.allclose(pca.singular_values, s[:4], rtol=1e-4)
    assert np.allclose(pca.transform(X), A @ V, atol=1e-4)


def test_pca_deterministic_and_validated():
    X, _, _ = toy_data()
    a, b = SparsePCA.fit(X, 4, seed=5), SparsePCA.fit(X, 4, seed=5)
    assert np.array_equal(a.components, b.components)
    with pytest.raises(ValueError, match=r"k=25 is out of range: allowed \[1, 24\]"):
        SparsePCA.fit(X, 25)


# -- tree structure and probabilities -----------------------------------------
def test_balanced_structure(toy):
    *_, tree = toy
    P = tree.num_leaves
    assert (P, tree.depth) == (16, 4)
    ll = tree.leaf_label
    assert int((ll < 0).sum()) == P - L
    assert sorted(ll[ll >= 0].tolist()) == list(range(L))
    assert torch.equal(ll[tree.label_leaf], torch.arange(L))
    real = (ll >= 0).long()
    for v in range(P - 1):  # real leaves under each child of each internal node
        d = int(math.floor(math.log2(v + 1)))
        width = P >> (d + 1)
        first_left = ((2 * v + 1) - (2 ** (d + 1) - 1)) * width
        n_left = int(real[first_left:first_left + width].sum())
        n_right = int(real[first_left + width:first_left + 2 * width].sum())
        assert n_right - n_left in (0, 1), (v, n_left, n_right)
        assert bool(tree.free[v]) == (n_left >= 1 and n_right >= 1)


def test_probabilities_sum_to_one_padding_zero(toy):
    *_, z, tree = toy
    leaf = tree.leaf_log_prob_all(z)
    pad = tree.leaf_label < 0
    assert torch.all(leaf[:, pad] == -math.inf)
    assert torch.allclose(leaf.exp().sum(1), torch.ones(z.shape[0]), atol=1e-5)
    allp = tree.log_prob_all(z)
    assert allp.shape == (z.shape[0], L)
    # Every real label, including the one without training rows, is reachable.
    assert torch.all(torch.isfinite(allp))
    floor = tree.depth * math.log(torch.sigmoid(torch.tensor(-tree.logit_clip)).item())
    assert float(allp.min()) >= floor - 1e-3


def test_log_prob_matches_log_prob_all(toy):
    *_, z, tree = toy
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, L, (z.shape[0], 7), generator=g)
    expect = tree.log_prob_all(z).gather(1, labels)
    assert torch.allclose(tree.log_prob(z, labels), expect, atol=1e-5)


def test_brute_force_path_enumeration(toy):
    *_, z, tree = toy
    W, b, free = tree.weight.double().numpy(), tree.bias.double().numpy(), tree.free.numpy()
    zz = z[:20].double().numpy()
    P, H = tree.num_leaves, tree.depth
    brute = np.full((zz.shape[0], L), np.nan)
    for j in range(P):  # every leaf: the bits of j, most significant first, are the turns
        label = int(tree.leaf_label[j])
        lp, node = np.zeros(zz.shape[0]), 0
        for d in range(H):
            right = (j >> (H - 1 - d)) & 1
            a = np.clip(zz @ W[node] + b[node], -tree.logit_clip, tree.logit_clip)
            p_right = 1 / (1 + np.exp(-a)) if free[node] else np.ones_like(a)
            with np.errstate(divide="ignore"):  # log 0 = -inf on the padding side
                lp = lp + np.log(p_right if right else 1 - p_right)
            node = 2 * node + 1 + right
        if label < 0:
            assert np.all(lp == -np.inf)
        else:
            brute[:, label] = lp
    assert np.allclose(tree.log_prob_all(z[:20]).double().numpy(), brute, atol=1e-4)


def test_sampling_matches_pn(toy):
    *_, z, tree = toy
    zz = z[[0, 100, 300]]
    g = torch.Generator().manual_seed(1)
    R = 60000
    ids, lp = tree.sample(zz, R, generator=g)
    assert ids.shape == (3, R) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < L  # padding never sampled
    assert torch.allclose(lp, tree.log_prob(zz, ids), atol=1e-5)
    freq = torch.zeros(3, L).scatter_add_(1, ids, torch.ones(3, R)) / R
    tv = 0.5 * (freq - tree.log_prob_all(zz).exp()).abs().sum(1)
    assert torch.all(tv < 0.015), tv


def test_padding_never_sampled_even_when_pushed():
    # Hand-made tree: a huge logit towards every padding side must not reach it.
    L3 = 3  # leaves: [pad, l?, l?, l?] -> node 1 (left subtree) holds one label and is forced
    tree = LabelTree(torch.tensor([[0.0], [0.0], [0.0]]), torch.tensor([-50.0, -50.0, 0.0]),
                     torch.tensor([True, False, True]), torch.tensor([-1, 0, 1, 2]),
                     torch.tensor([1, 2, 3]))
    ids, _ = tree.sample(torch.zeros(4, 1), 5000, generator=torch.Generator().manual_seed(0))
    assert int(ids.min()) >= 0
    p = tree.log_prob_all(torch.zeros(1, 1)).exp()
    assert abs(float(p.sum()) - 1) < 1e-6 and float(p[0, 0]) > 0.99
    assert tree.num_labels == L3


def test_fit_deterministic(toy):
    X, Y, _, pca, z, tree = toy
    r, lab = training_pairs(Y, "all")
    again = fit_label_tree(pca.transform_torch(X), r, lab, L)
    for name in ("weight", "bias", "free", "leaf_label", "label_leaf"):
        assert torch.equal(getattr(tree, name), getattr(again, name)), name


def test_separable_toy_concentrates_on_true_label(toy):
    *_, y, _, z, tree = toy
    pred = tree.log_prob_all(z).argmax(1).numpy()
    assert (pred == y).mean() > 0.9  # chance is 1/12
    assert float(tree.log_prob_all(z).exp()[torch.arange(len(y)), torch.as_tensor(y)].mean()) > 0.5


def test_training_pairs():
    Y = sp.csr_matrix(np.array([[0, 1, 1], [0, 0, 0], [1, 0, 1]], np.float32))
    r, lab = training_pairs(Y, "all")
    assert r.tolist() == [0, 0, 2, 2] and lab.tolist() == [1, 2, 0, 2]
    r, lab = training_pairs(Y, "first")
    assert r.tolist() == [0, 2] and lab.tolist() == [1, 0]
    with pytest.raises(ValueError, match="pairs='some' is not supported"):
        training_pairs(Y, "some")


# -- Newton step ---------------------------------------------------------------
def _toy_logistic(seed: int, separable: bool):
    g = torch.Generator().manual_seed(seed)
    n, M, k = 600, 5, 3
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    node = torch.sort(torch.randint(0, M, (n,), generator=g)).values
    w_true = torch.randn(M, k, generator=g, dtype=torch.float64) * (20 if separable else 1)
    a = (z * w_true[node]).sum(1)
    t = (a > 0).double() if separable else torch.bernoulli(torch.sigmoid(a), generator=g)
    zt = torch.cat([z, torch.ones(n, 1, dtype=torch.float64)], 1)
    return zt, node, t, M


@pytest.mark.parametrize("separable", [False, True])
def test_newton_step_decreases_loss_and_converges(separable):
    zt, node, t, M = _toy_logistic(0, separable)
    lam = 0.1
    theta = torch.zeros(M, zt.shape[1], dtype=torch.float64)
    theta[:, 0] = 3.0  # a poor start
    losses = []
    for _ in range(30):
        new, before, after, _ = newton_step(zt, theta, node, t, lam)
        assert torch.all(after <= before + 1e-9)
        assert torch.allclose(after, _logistic_stats(zt, new, node, t, lam, hessian=False)[0])
        losses.append(after.sum().item())
        theta = new
    # At the optimum the gradient (checked with autograd) vanishes.
    th = theta.clone().requires_grad_(True)
    a = (zt * th[node]).sum(1)
    loss = (torch.nn.functional.softplus(a) - t * a).sum() + 0.5 * lam * (th ** 2).sum()
    loss.backward()
    assert float(th.grad.abs().max()) < 1e-6
    assert losses[-1] < losses[0]


def test_newton_step_only_moves_active_nodes():
    zt, node, t, M = _toy_logistic(1, False)
    theta = torch.zeros(M, zt.shape[1], dtype=torch.float64)
    active = torch.tensor([True, False, True, False, True])
    sel = active[node]
    new, *_ = newton_step(zt[sel], theta, node[sel], t[sel], 0.1, active)
    assert torch.equal(new[~active], theta[~active]) and bool((new[active] != 0).any())


# -- sampler contract ------------------------------------------------------------
def _batch(Y, rows):
    return Positives.from_csr(Y, rows)


def test_sampler_contract(sampler):
    s, X, Y = sampler
    rows = torch.arange(0, 200, 3)
    pos = _batch(Y, rows)
    emb = torch.zeros(rows.shape[0], 8)
    neg = s.sample(emb, pos, epoch=0, generator=torch.Generator().manual_seed(0), rows=rows)
    B, R = rows.shape[0], 5
    assert neg.ids.shape == neg.mask.shape == neg.source.shape == neg.log_q.shape == (B, R)
    assert neg.ids.dtype == torch.int64 and neg.mask.dtype == torch.bool and neg.source.dtype == torch.uint8
    assert torch.all(neg.source == SOURCE_ADVERSARIAL)
    assert int(neg.ids.min()) >= 0 and int(neg.ids.max()) < L
    hit = ((neg.ids[:, :, None] == pos.ids[:, None, :]) & pos.mask[:, None, :]).any(2)
    assert bool(hit.any())  # p_n is good: it often proposes a positive ...
    assert not bool((hit & neg.mask).any())  # ... which is never used
    for b in range(B):  # no repeated id with mask True, and a repeat is masked only as a repeat
        kept = neg.ids[b][neg.mask[b]].tolist()
        assert len(kept) == len(set(kept))
        for r in range(R):
            first = neg.ids[b].tolist().index(int(neg.ids[b, r])) == r
            assert bool(neg.mask[b, r]) == (first and not bool(hit[b, r]))
    z = s.z_train[rows]
    assert torch.allclose(neg.log_q, s.tree.log_prob(z, neg.ids), atol=1e-5)
    assert torch.allclose(neg.log_q, s.log_pn(X[rows.numpy()], neg.ids), atol=1e-5)


def test_sampler_determinism(sampler):
    s, _, Y = sampler
    rows = np.arange(40)
    pos = _batch(Y, rows)
    emb = torch.zeros(40, 3)
    a = s.sample(emb, pos, generator=torch.Generator().manual_seed(7), rows=rows)
    b = s.sample(emb, pos, generator=torch.Generator().manual_seed(7), rows=rows)
    c = s.sample(emb, pos, generator=torch.Generator().manual_seed(8), rows=rows)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.ids, c.ids)


def test_sampler_requires_rows(sampler):
    s, _, Y = sampler
    pos = _batch(Y, np.arange(4))
    with pytest.raises(ValueError, match="needs rows="):
        s.sample(torch.zeros(4, 2), pos)
    with pytest.raises(ValueError, match="rows has 3 entries but the batch has 4"):
        s.sample(torch.zeros(4, 2), pos, rows=torch.arange(3))


def test_log_pn_for_test_rows(sampler):
    s, X, _ = sampler
    Xt = X[:10]
    allp = s.log_pn_all(Xt)
    assert allp.shape == (10, L)
    assert torch.allclose(torch.logsumexp(allp, 1), torch.zeros(10), atol=1e-5)
    z = s.project(Xt)
    assert torch.allclose(s.log_pn_all(z), allp) and torch.allclose(s.log_pn_all(Xt.toarray()), allp, atol=1e-5)
    labels = torch.tensor([[0, 5]] * 10)
    assert torch.allclose(s.log_pn(Xt, labels), allp.gather(1, labels), atol=1e-5)
    with pytest.raises(ValueError, match=r"labels out of range: allowed \[0, 12\]"):
        s.log_pn(Xt, torch.full((10, 1), L))
    # A torch sparse tensor holds features; a dense one is z and must have k columns.
    Xs = torch.sparse_csr_tensor(torch.as_tensor(Xt.indptr, dtype=torch.int64),
                                 torch.as_tensor(Xt.indices, dtype=torch.int64),
                                 torch.as_tensor(Xt.data), size=Xt.shape,
                                 check_invariants=True)
    assert torch.allclose(s.log_pn_all(Xs), allp, atol=1e-5)
    with pytest.raises(ValueError, match=r"a dense tensor is taken as z and must be \[n, k=4\]"):
        s.log_pn_all(torch.as_tensor(Xt.toarray()))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_negatives": 0}, r"num_negatives=0 is out of range: allowed \[1, 12\]"),
    ({"num_negatives": 13}, r"num_negatives=13 is out of range: allowed \[1, 12\]"),
    ({"k": 0}, r"k=0 is out of range: allowed \[1, 24\]"),
    ({"k": 2.5}, r"k must be an integer, got 2.5"),
    ({"pairs": "every"}, r"pairs='every' is not supported: allowed \['all', 'first'\]"),
    ({"lambda_n": 0.0}, r"lambda_n=0.0 is out of range: allowed > 0.0"),
    ({"max_rounds": 0}, r"max_rounds=0 is out of range: allowed \[1, 1000\]"),
    ({"seed": -1}, r"seed=-1 is out of range: allowed >= 0"),
])
def test_factory_validation(kwargs, message):
    X, Y, _ = toy_data(rows_per_label=3)
    args = {"num_negatives": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        fit_adversarial_sampler(X, Y, args.pop("num_negatives"), **args)


def test_factory_shape_mismatch():
    X, Y, _ = toy_data(rows_per_label=3)
    with pytest.raises(ValueError, match="X_train has 36 rows but Y_train has 35"):
        fit_adversarial_sampler(X, Y[:35], 3)


def test_state_dict_round_trip(sampler):
    s, X, Y = sampler
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)
    other = fit_adversarial_sampler(X, Y, 5, k=4, seed=3, pairs="first", lambda_n=1.0)
    assert not torch.equal(other.tree.weight, s.tree.weight)
    other.load_state_dict(state)
    rebuilt = AdversarialSampler.from_state_dict(state, X)
    rows = np.arange(30)
    pos = _batch(Y, rows)
    ref = s.sample(torch.zeros(30, 1), pos, generator=torch.Generator().manual_seed(2), rows=rows)
    for t in (other, rebuilt):
        got = t.sample(torch.zeros(30, 1), pos, generator=torch.Generator().manual_seed(2), rows=rows)
        assert torch.equal(got.ids, ref.ids) and torch.equal(got.log_q, ref.log_q)
        assert torch.equal(t.log_pn_all(X[:5]), s.log_pn_all(X[:5]))
