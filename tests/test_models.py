import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from xmcviz.core.models import LinearEncoder, MLPEncoder, XMCModel, build_model
from xmcviz.core.trainer import csr_to_torch




def _batch(B=6, D=40, density=0.2, seed=0):
    X = sp.random(B, D, density=density, format="csr", dtype=np.float32,
                  random_state=np.random.default_rng(seed))
    X.sort_indices()
    return X


def test_W_layout_and_xavier_bound():
    torch.manual_seed(0)
    L, d = 500, 64
    m = build_model("mlp", num_features=30, num_labels=L, hidden=d)
    assert tuple(m.W.shape) == (L, d)
    assert m.W.dtype == torch.float32 and m.W.is_contiguous()
    bound = math.sqrt(6.0 / (d + L))
    W = m.W.detach()
    assert float(W.abs().max()) <= bound
    # uniform(-b, b): the extremes are reached and the std is b / sqrt(3)
    assert float(W.abs().max()) > 0.98 * bound
    assert abs(float(W.std()) - bound / math.sqrt(3)) < 0.02 * bound
    assert m.bias is None
    mb = build_model("linear", num_features=30, num_labels=L, label_bias=True)
    assert tuple(mb.W.shape) == (L, 30)
    assert tuple(mb.bias.shape) == (L,) and float(mb.bias.detach().abs().sum()) == 0


def test_build_model_rejects_unknown_kind():
    with pytest.raises(ValueError, match="'cnn'"):
        build_model("cnn", 10, 10)


def test_linear_encoder_returns_dense_x():
    X = _batch()
    enc = LinearEncoder(X.shape[1])
    for x in (csr_to_torch(X), csr_to_torch(X).to_sparse_coo()):
        e = enc(x)
        assert e.layout == torch.strided
        np.testing.assert_array_equal(e.numpy(), X.toarray())


def test_mlp_sparse_matches_dense_and_dropout_on_values():
    torch.manual_seed(0)
    X = _batch()
    enc = MLPEncoder(X.shape[1], hidden=16, dropout=0.2)
    dense = torch.as_tensor(X.toarray())
    enc.eval()
    ref = torch.relu(dense @ enc.linear.weight.T + enc.linear.bias)
    for x in (csr_to_torch(X), csr_to_torch(X).to_sparse_coo()):
        torch.testing.assert_close(enc(x), ref)
    # Gradient reaches the dense weight through sparse @ dense.
    enc(csr_to_torch(X)).sum().backward()
    assert enc.linear.weight.grad is not None and enc.linear.weight.grad.abs().sum() > 0
    # Training mode: dropout zeroes some stored values and rescales the rest by 1/(1-p).
    enc = MLPEncoder(200, hidden=16, dropout=0.2)
    enc.train()
    x = csr_to_torch(_batch(B=50, D=200, density=0.3))
    from xmcviz.core.models import _with_values, _sparse_values
    vals = _sparse_values(x)
    torch.manual_seed(1)
    dropped = torch.nn.functional.dropout(vals, 0.2, True)
    frac = float((dropped == 0).float().mean())
    assert 0.1 < frac < 0.3
    torch.manual_seed(1)
    out = enc(x)
    torch.testing.assert_close(out, torch.relu(_with_values(x, dropped).to_dense()
                                               @ enc.linear.weight.T + enc.linear.bias))


@pytest.mark.parametrize("label_bias", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_score_paths_agree_values_and_grads(label_bias, masked):
    torch.manual_seed(0)
    B, K, L, d = 5, 7, 30, 12
    ids = torch.randint(0, L, (B, K))
    mask = torch.rand(B, K) > 0.3 if masked else None
    results = []
    for path in ("gather", "unique", "auto"):
        torch.manual_seed(3)
        m = XMCModel(nn.Identity(), L, d, label_bias=label_bias)
        if label_bias:
            with torch.no_grad():
                m.bias.normal_()
        emb = torch.randn(B, d, requires_grad=True, generator=torch.Generator().manual_seed(4))
        s = m.score(emb, ids, mask=mask, path=path)
        weights = torch.randn(B, K, generator=torch.Generator().manual_seed(5))
        (s * weights).sum().backward()
        gW = m.W.grad.to_dense()
        gb = m.bias.grad.to_dense() if label_bias else None
        results.append((s.detach(), emb.grad.clone(), gW, gb))
        assert m.W.grad.is_sparse  # row-sparse gradient for SparseAdam
    ref = results[0]
    for r in results[1:]:
        torch.testing.assert_close(r[0], ref[0])
        torch.testing.assert_close(r[1], ref[1])
        torch.testing.assert_close(r[2], ref[2])
        if label_bias:
            torch.testing.assert_close(r[3], ref[3])
    # Values: equal to the dense scores, masked entries included.
    torch.manual_seed(3)
    m = XMCModel(nn.Identity(), L, d, label_bias=label_bias)
    if label_bias:
        with torch.no_grad():
            m.bias.normal_()
    emb = torch.randn(B, d, generator=torch.Generator().manual_seed(4))
    full = m.full_scores(emb)
    torch.testing.assert_close(ref[0], full.gather(1, ids))


def test_masked_entries_carry_no_gradient():
    torch.manual_seed(0)
    L, d = 20, 8
    m = XMCModel(nn.Identity(), L, d)
    emb = torch.randn(2, d, requires_grad=True)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[True, False, True], [False, True, True]])
    for path in ("gather", "unique"):
        m.W.grad = None
        emb.grad = None
        m.score(emb, ids, mask=mask, path=path).sum().backward()
        rows = set(m.W.grad.coalesce().indices()[0].tolist())
        assert rows == {1, 3, 5, 6}  # labels 2 and 4 are masked: not in the gradient at all
        expect = torch.stack([m.W[1] + m.W[3], m.W[5] + m.W[6]]).detach()
        torch.testing.assert_close(emb.grad, expect)


def test_auto_picks_unique_for_wide_inputs(monkeypatch, count_calls):
    torch.manual_seed(0)
    m = XMCModel(nn.Identity(), 50, 10)
    calls = count_calls(torch, "unique")
    ids = torch.randint(0, 50, (8, 30))
    emb = torch.randn(8, 10)
    m.score(emb, ids)
    assert not calls  # small block: gather, no unique
    monkeypatch.setattr(XMCModel, "gather_limit", 100)
    s = m.score(emb, ids)
    assert calls  # over the limit with U d + B U < B K d: unique
    torch.testing.assert_close(s, m.full_scores(emb).gather(1, ids))


def test_dense_grad_option_and_custom_encoder():
    class Enc(nn.Module):  # any module mapping sparse inputs to embeddings
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(40, 6)

        def forward(self, x):
            return torch.tanh(torch.sparse.mm(x, self.lin.weight.T) + self.lin.bias)

    torch.manual_seed(0)
    m = XMCModel(Enc(), num_labels=25, dim=6, sparse_grad=False)
    x = csr_to_torch(_batch())
    emb = m.embed(x)
    assert tuple(emb.shape) == (6, 6)
    ids = torch.randint(0, 25, (6, 4))
    m.score(emb, ids).sum().backward()
    assert not m.W.grad.is_sparse and m.encoder.lin.weight.grad is not None
    assert tuple(m.full_scores(emb).shape) == (6, 25)


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1])
def test_dropout_must_lie_in_half_open_unit_interval(p):
    from xmcviz.core.trainer import TrainConfig
    with pytest.raises(ValueError, match=r"dropout=.* allowed \[0.0, 1.0\)"):
        MLPEncoder(10, hidden=4, dropout=p)
    with pytest.raises(ValueError, match=r"dropout=.* allowed \[0.0, 1.0\)"):
        TrainConfig(dropout=p).validate()
