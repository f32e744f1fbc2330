"""The numba row-gradient kernel (xmcviz.core.fast.cpu_kernels.row_sums) against torch's path."""
import importlib.util

import numpy as np
import pytest
import torch

import xmcviz.core.fast.score
from xmcviz.core.fast.cpu_kernels import kernels_available, row_sums
from xmcviz.core.fast.score import _row_gradient

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba") is None,
                                reason="numba is not installed")


def _case(seed: int, B: int, K: int, L: int, d: int, live_share: float | None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, L, (B, K), generator=g)
    coef = torch.randn(B, K, generator=g)
    emb = torch.randn(B, d, generator=g)
    live = None if live_share is None else torch.rand(B, K, generator=g) < live_share
    return ids, coef, emb, live


def _reference(ids, coef, emb, live):
    """Per-entry rows summed by id, in float64: what row_sums must give."""
    keep = torch.ones_like(ids, dtype=torch.bool) if live is None else live
    b = torch.arange(ids.shape[0]).unsqueeze(1).expand_as(ids)[keep]
    dense = torch.zeros(int(ids.max()) + 1, emb.shape[1], dtype=torch.float64)
    dense.index_add_(0, ids[keep], coef[keep].double().unsqueeze(1) * emb[b].double())
    uniq = torch.unique(ids[keep])
    return uniq, dense[uniq]


@pytest.mark.parametrize("B,K,L,d,live_share", [
    (7, 5, 4, 3, None),        # many duplicates, every entry live
    (32, 40, 50, 8, 0.7),      # duplicates within and across rows, some masked
    (16, 9, 10 ** 6, 16, 0.5), # few duplicates, large ids
    (1, 1, 3, 2, None),
    (5, 6, 9, 4, 0.0),         # nothing live
])
def test_row_sums_matches_reference(B, K, L, d, live_share):
    ids, coef, emb, live = _case(0, B, K, L, d, live_share)
    assert kernels_available(coef, emb)
    uniq, rows = row_sums(ids, coef, emb, live)
    ref_u, ref_rows = _reference(ids, coef, emb, live)
    assert uniq.dtype == torch.int64 and rows.dtype == torch.float32
    assert torch.equal(uniq, ref_u)
    assert rows.shape == (ref_u.numel(), d)
    torch.testing.assert_close(rows.double(), ref_rows, rtol=1e-5, atol=1e-5)


def test_row_sums_is_deterministic_and_sums_in_position_order():
    ids = torch.tensor([[4, 4], [4, 1]])
    # Entries of id 4, in position order: 1e8, -1e8, 1: (1e8 - 1e8) + 1 = 1 in float32;
    # any other order (1e8 + 1 first) loses the 1.
    coef = torch.tensor([[1e8, -1e8], [1.0, 2.0]])
    emb = torch.ones(2, 1)
    uniq, rows = row_sums(ids, coef, emb)
    assert uniq.tolist() == [1, 4] and rows[:, 0].tolist() == [2.0, 1.0]
    ids, coef, emb, live = _case(3, 64, 50, 200, 32, 0.8)
    a, b = row_sums(ids, coef, emb, live), row_sums(ids, coef, emb, live)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_ids_too_large_for_the_sort_keys_take_the_torch_path():
    ids = torch.tensor([[1 << 60, 3]])
    coef, emb = torch.tensor([[2.0, 1.0]]), torch.ones(1, 2)
    assert row_sums(ids, coef, emb) is None
    g = _row_gradient(ids, coef, emb, None, torch.Size([(1 << 60) + 1, 2]))
    assert g._indices()[0].tolist() == [3, 1 << 60]
    assert g._values().tolist() == [[1.0, 1.0], [2.0, 2.0]]


@pytest.mark.parametrize("live_share", [None, 0.6])
def test_model_row_gradient_same_on_both_paths(live_share, monkeypatch, count_calls):
    calls = count_calls(xmcviz.core.fast.score, "row_sums")
    ids, coef, emb, live = _case(5, 128, 30, 5000, 24, live_share)
    shape = torch.Size([5000, 24])
    monkeypatch.setenv("XMCVIZ_NUMBA", "1")
    fast = _row_gradient(ids, coef, emb, live, shape)
    monkeypatch.setenv("XMCVIZ_NUMBA", "0")
    plain = _row_gradient(ids, coef, emb, live, shape)
    assert len(calls) == 1  # the kernel ran for the first only
    assert fast.is_coalesced() and plain.is_coalesced()
    assert torch.equal(fast._indices(), plain._indices())
    torch.testing.assert_close(fast._values(), plain._values(), rtol=1e-5, atol=1e-5)


def test_float64_and_non_contiguous_inputs_take_the_torch_path():
    a = torch.zeros(4, 3)
    assert not kernels_available(a.double(), a)
    assert not kernels_available(a.T, a)
    ids = torch.tensor([[2, 0, 2]])
    coef, emb = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), torch.ones(1, 2).double()
    g = _row_gradient(ids, coef, emb, None, torch.Size([3, 2]))
    assert g._indices()[0].tolist() == [0, 2] and g._values()[:, 0].tolist() == [2.0, 4.0]
    assert g.dtype == torch.float64 and np.isfinite(g._values().numpy()).all()


def test_non_contiguous_score_gradients_still_take_the_kernel(count_calls):
    calls = count_calls(xmcviz.core.fast.score, "row_sums")
    ids, coef, emb, _ = _case(2, 8, 6, 20, 4, None)
    g = _row_gradient(ids, coef.T.contiguous().T, emb.T.contiguous().T, None,
                      torch.Size([20, 4]))
    assert calls
    ref_u, ref_rows = _reference(ids, coef, emb, None)
    assert torch.equal(g._indices()[0], ref_u)
    torch.testing.assert_close(g._values().double(), ref_rows, rtol=1e-5, atol=1e-5)
