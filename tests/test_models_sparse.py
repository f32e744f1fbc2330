"""The sparse score path (the linear model's x times gathered label rows)."""
import pytest
import torch
from torch import nn

from xmcviz.core.fast.score import _SparseScores
from xmcviz.core.models import XMCModel


def _sparse_emb(B, D, density, seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.rand(B, D, generator=g) * (torch.rand(B, D, generator=g) < density)
    emb[1] = 0  # a row with no non-zero
    return emb


@pytest.mark.parametrize("sparse_grad", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_sparse_path_matches_gather(sparse_grad, masked):
    B, K, L, D = 6, 9, 40, 300
    emb = _sparse_emb(B, D, 0.05, 0)
    ids = torch.randint(0, L, (B, K), generator=torch.Generator().manual_seed(1))
    mask = torch.rand(B, K, generator=torch.Generator().manual_seed(2)) > 0.3 if masked else None
    out = {}
    for path in ("gather", "sparse"):
        torch.manual_seed(3)
        m = XMCModel(nn.Identity(), L, D, label_bias=True, sparse_grad=sparse_grad)
        s = m.score(emb, ids, mask=mask, path=path)
        (s * torch.randn(B, K, generator=torch.Generator().manual_seed(5))).sum().backward()
        rows = set(m.W.grad.coalesce().indices()[0].tolist()) if m.W.grad.is_sparse else None
        out[path] = (s.detach(), m.W.grad.to_dense(), m.bias.grad.to_dense(), rows)
    for a, b in zip(out["gather"], out["sparse"]):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b)
        else:
            assert a == b  # the same label rows in the sparse gradient (masked ones left out)
    assert out["sparse"][1].abs().sum() > 0


def test_auto_takes_the_sparse_path_only_for_wide_sparse_inputs(count_calls):
    calls = count_calls(_SparseScores, "apply")
    L, D = 30, 400
    m = XMCModel(nn.Identity(), L, D)
    ids = torch.randint(0, L, (4, 5))
    m.score(_sparse_emb(4, D, 0.05, 0), ids)
    assert calls == [1]
    m.score(torch.rand(4, D), ids)                                # dense: not sparse
    m.score(_sparse_emb(4, D, 0.05, 0).requires_grad_(), ids)     # needs a gradient
    assert calls == [1]


def test_sparse_path_refuses_an_input_that_needs_a_gradient():
    m = XMCModel(nn.Identity(), 10, 300)
    emb = _sparse_emb(2, 300, 0.05, 0).requires_grad_()
    with pytest.raises(ValueError, match="path='sparse'"):
        m.score(emb, torch.zeros(2, 3, dtype=torch.int64), path="sparse")
