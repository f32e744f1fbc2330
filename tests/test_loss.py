import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from xmcviz.core.loss import model_loss, sampled_bce
from xmcviz.core.models import XMCModel
from xmcviz.samplers.base import Negatives, Positives




def _scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(4, 3, generator=g)
    neg = torch.randn(4, 6, generator=g)
    pm = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    nm = torch.rand(4, 6, generator=g) > 0.2
    return pos, pm, neg, nm


def test_sampled_bce_formula():
    pos, pm, neg, nm = _scores()
    expect = ((-torch.log(torch.sigmoid(pos)) * pm).sum(1)
              + (-torch.log(1 - torch.sigmoid(neg)) * nm).sum(1)).mean()
    torch.testing.assert_close(sampled_bce(pos, pm, neg, nm), expect)


def test_eta_ratio_scales_only_the_positive_part():
    pos, pm, neg, nm = _scores(1)
    pos_part = (F.softplus(-pos) * pm).sum(1).mean()
    neg_part = (F.softplus(neg) * nm).sum(1).mean()
    for r in (1.0, 0.5, 50.0):
        torch.testing.assert_close(sampled_bce(pos, pm, neg, nm, eta_ratio=r),
                                   r * pos_part + neg_part)
    # Gradient of the negatives is unchanged by eta_ratio; the positives' scales with it.
    grads = []
    for r in (1.0, 50.0):
        p, n = pos.clone().requires_grad_(), neg.clone().requires_grad_()
        sampled_bce(p, pm, n, nm, eta_ratio=r).backward()
        grads.append((p.grad, n.grad))
    torch.testing.assert_close(grads[1][1], grads[0][1])
    torch.testing.assert_close(grads[1][0], 50.0 * grads[0][0])
    with pytest.raises(ValueError, match="eta_ratio=0"):
        sampled_bce(pos, pm, neg, nm, eta_ratio=0)


def test_masked_entries_are_ignored_even_when_infinite():
    pos, pm, neg, nm = _scores(2)
    base = sampled_bce(pos, pm, neg, nm)
    pos2, neg2 = pos.clone(), neg.clone()
    pos2[~pm] = float("-inf")
    neg2[~nm] = float("nan")
    torch.testing.assert_close(sampled_bce(pos2, pm, neg2, nm), base)


def test_full_loss_equals_bce_over_all_labels():
    torch.manual_seed(0)
    B, L, d = 6, 15, 5
    Y = sp.random(B, L, density=0.25, format="csr", random_state=np.random.default_rng(0))
    Y.data[:] = 1
    Y = sp.csr_matrix(Y, dtype=np.float32)
    Y.sort_indices()
    pos = Positives.from_csr(Y, np.arange(B))
    ids = torch.arange(L).expand(B, L).contiguous()  # the full sampler: every label
    neg_mask = torch.as_tensor(Y.toarray() == 0)  # positives masked
    neg = Negatives(ids, neg_mask, torch.zeros(B, L, dtype=torch.uint8))
    m = XMCModel(nn.Identity(), L, d, label_bias=True)
    with torch.no_grad():
        m.bias.normal_()
    emb = torch.randn(B, d, requires_grad=True)
    out = model_loss(m, emb, pos, neg)
    out.loss.backward()
    g_sparse = (m.W.grad.to_dense(), m.bias.grad.to_dense(), emb.grad.clone())

    m.W.grad = m.bias.grad = emb.grad = None
    m.sparse_grad = False
    full = F.binary_cross_entropy_with_logits(m.full_scores(emb), torch.as_tensor(Y.toarray()),
                                              reduction="sum") / B
    torch.testing.assert_close(out.loss, full)
    full.backward()
    torch.testing.assert_close(g_sparse[0], m.W.grad)
    torch.testing.assert_close(g_sparse[1], m.bias.grad)
    torch.testing.assert_close(g_sparse[2], emb.grad)
    # The scores handed back are those of the model on the same ids.
    torch.testing.assert_close(out.neg_scores, m.full_scores(emb).detach())


def test_only_loss_rows_get_gradient():
    torch.manual_seed(0)
    L, d = 40, 4
    m = XMCModel(nn.Identity(), L, d)
    pos = Positives(torch.tensor([[3, 0], [7, 8]]), torch.tensor([[True, False], [True, True]]))
    neg = Negatives(torch.tensor([[10, 11, 10], [12, 13, 14]]),
                    torch.tensor([[True, True, False], [True, False, True]]),
                    torch.zeros(2, 3, dtype=torch.uint8))
    model_loss(m, torch.randn(2, d), pos, neg).loss.backward()
    rows = sorted(set(m.W.grad.coalesce().indices()[0].tolist()))
    # label 0 (padding) and 13 (masked) are absent; 10 appears once though drawn twice
    assert rows == [3, 7, 8, 10, 11, 12, 14]
