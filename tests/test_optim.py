"""RowSparseAdam (xmcviz.core.optim) against torch.optim.SparseAdam, and the model's row gradient."""
import copy
import importlib.util
import sys
import warnings

import pytest
import torch

import xmcviz.core.optim
import xmcviz.core.fast.cpu_kernels
from xmcviz.core.models import build_model
from xmcviz.core.optim import RowSparseAdam, coalesce_rows
from xmcviz.core.fast.cpu_kernels import kernels_available

numba_missing = importlib.util.find_spec("numba") is None


@pytest.fixture(params=["fused", "torch"])
def adam_path(request, monkeypatch, count_calls):
    """Run a test on both step paths: the numba kernel (CPU default) and torch's ops."""
    if request.param == "fused" and numba_missing:
        pytest.skip("numba is not installed")
    monkeypatch.setenv("XMCVIZ_NUMBA", "1" if request.param == "fused" else "0")
    calls = count_calls(xmcviz.core.optim, "fused_adam_rows")
    yield calls
    # The path under test is the one that ran.
    assert bool(calls) == (request.param == "fused")


def _sparse(ids, vals, shape):
    return torch.sparse_coo_tensor(ids[None], vals, shape, check_invariants=False)


def test_coalesce_rows_sums_duplicates_and_sorts():
    ids = torch.tensor([7, 2, 7, 0, 2, 7])
    vals = torch.arange(12.0).view(6, 2)
    idx, g = coalesce_rows(_sparse(ids, vals, (9, 2)))
    ref = _sparse(ids, vals, (9, 2)).coalesce()
    assert idx.tolist() == [0, 2, 7]
    torch.testing.assert_close(g, ref._values())
    # An already coalesced gradient is used as is (no copy).
    idx2, g2 = coalesce_rows(ref)
    assert idx2.data_ptr() == ref._indices().data_ptr() and g2.data_ptr() == ref._values().data_ptr()


@pytest.mark.parametrize("coalesced", [False, True])
def test_matches_sparse_adam_with_duplicate_rows(coalesced, adam_path):
    torch.manual_seed(0)
    L, d = 40, 5
    Wa = torch.nn.Parameter(torch.randn(L, d))
    ba = torch.nn.Parameter(torch.randn(L))
    Wb, bb = (torch.nn.Parameter(t.detach().clone()) for t in (Wa, ba))
    ref = torch.optim.SparseAdam([Wa, ba], lr=0.03, betas=(0.8, 0.95))
    fast = RowSparseAdam([Wb, bb], lr=0.03, betas=(0.8, 0.95))
    for _ in range(5):
        ids = torch.randint(0, 15, (25,))  # duplicates; rows >= 15 never in a gradient
        gW, gb = torch.randn(25, d), torch.randn(25)
        for W, b, opt in ((Wa, ba, ref), (Wb, bb, fast)):
            W.grad, b.grad = _sparse(ids, gW, (L, d)), _sparse(ids, gb, (L,))
            if coalesced:
                W.grad, b.grad = W.grad.coalesce(), b.grad.coalesce()
            opt.step()
        torch.testing.assert_close(Wb, Wa)
        torch.testing.assert_close(bb, ba)
    assert torch.equal(Wb[15:], Wa[15:])
    sa, sb = ref.state_dict(), fast.state_dict()
    assert sb["state"][0].keys() == sa["state"][0].keys() and sb["state"][0]["step"] == 5
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(sb["state"][0][key], sa["state"][0][key])
        assert sb["state"][0][key].shape == (L, d) and sb["state"][0][key][15:].abs().sum() == 0
    # SparseAdam's state loads into RowSparseAdam and both continue alike.
    resumed = RowSparseAdam([Wb, bb], lr=0.03, betas=(0.8, 0.95))
    resumed.load_state_dict(copy.deepcopy(sa))  # a copy: sa holds ref's live tensors
    ids = torch.tensor([1, 1, 3, 20])
    gW = torch.randn(4, d)
    for W, opt in ((Wa, ref), (Wb, resumed)):
        W.grad = _sparse(ids, gW, (L, d))
    ba.grad = bb.grad = None
    ref.step()
    resumed.step()
    torch.testing.assert_close(Wb, Wa)


def test_fused_path_only_for_contiguous_cpu_float32(monkeypatch):
    monkeypatch.setenv("XMCVIZ_NUMBA", "1")
    a = torch.zeros(6, 4)
    assert kernels_available(a, a) is not numba_missing
    assert not kernels_available(a, a.double())
    assert not kernels_available(a, a.T)
    monkeypatch.setenv("XMCVIZ_NUMBA", "0")
    assert not kernels_available(a, a)


def test_float64_parameters_take_the_torch_path(monkeypatch):
    calls = []
    monkeypatch.setattr(xmcviz.core.optim, "fused_adam_rows", lambda *a, **k: calls.append(1))
    W = torch.nn.Parameter(torch.zeros(5, 3, dtype=torch.float64))
    W.grad = _sparse(torch.tensor([1, 3]), torch.ones(2, 3, dtype=torch.float64), (5, 3))
    RowSparseAdam([W], lr=0.1).step()
    assert not calls and W[1].lt(0).all() and W[0].eq(0).all()


def test_kernel_that_cannot_be_built_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setenv("XMCVIZ_NUMBA", "1")
    monkeypatch.setitem(sys.modules, "xmcviz.core.fast._numba_kernels", None)  # import fails
    xmcviz.core.fast.cpu_kernels._kernels.cache_clear()
    try:
        if numba_missing:
            assert not kernels_available(torch.zeros(2, 2))
            return
        with pytest.warns(RuntimeWarning, match="fused CPU kernels are unavailable"):
            assert not kernels_available(torch.zeros(2, 2))
        W = torch.nn.Parameter(torch.zeros(5, 3))
        W.grad = _sparse(torch.tensor([1, 3]), torch.ones(2, 3), (5, 3))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once only
            RowSparseAdam([W], lr=0.1).step()  # the torch path
        assert W[1].lt(0).all() and W[0].eq(0).all()
    finally:
        xmcviz.core.fast.cpu_kernels._kernels.cache_clear()


def test_refuses_dense_gradients():
    W = torch.nn.Parameter(torch.zeros(4, 2))
    W.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        RowSparseAdam([W]).step()


@pytest.mark.parametrize("numba_flag", ["1", "0"])
def test_model_row_gradient_is_coalesced_and_matches_dense_reference(numba_flag, monkeypatch):
    monkeypatch.setenv("XMCVIZ_NUMBA", numba_flag)  # the numba kernel and torch's path
    torch.manual_seed(1)
    m = build_model("mlp", num_features=12, num_labels=30, hidden=4, dropout=0.0)
    emb = torch.randn(3, 4, requires_grad=True)
    ids = torch.tensor([[1, 5, 5, 9], [5, 2, 29, 1], [0, 0, 7, 3]])
    mask = torch.tensor([[True, True, False, True], [True, True, True, False],
                         [True, False, True, True]])
    s = m.score(emb, ids, mask=mask, path="gather")
    (s * torch.arange(1.0, 13.0).view(3, 4)).sum().backward()
    g = m.W.grad
    assert g.is_sparse and bool((g._indices()[0].diff() > 0).all())  # sorted, distinct
    # Only rows of live entries appear (3 is live, 29 is live; row 0 is live once).
    live_rows = sorted(set(ids[mask].tolist()))
    assert g._indices()[0].tolist() == live_rows
    # Reference: dense scores with the masked entries detached.
    W = m.W.detach().clone().requires_grad_(True)
    e2 = emb.detach().clone().requires_grad_(True)
    s2 = torch.einsum("bd,bkd->bk", e2, W[ids])
    s2 = torch.where(mask, s2, s2.detach())
    (s2 * torch.arange(1.0, 13.0).view(3, 4)).sum().backward()
    torch.testing.assert_close(s, s2)
    torch.testing.assert_close(g.to_dense(), W.grad)
    torch.testing.assert_close(emb.grad, e2.grad)


@pytest.mark.skipif(numba_missing, reason="numba is not installed")
def test_training_with_fused_and_torch_paths_agrees(monkeypatch, count_calls):
    from xmcviz import data
    from xmcviz.core.trainer import TrainConfig, Trainer
    tiny = data.synthetic("tiny", seed=0)
    runs, calls = [], count_calls(xmcviz.core.optim, "fused_adam_rows")
    for flag in ("1", "0"):
        monkeypatch.setenv("XMCVIZ_NUMBA", flag)
        cfg = TrainConfig(model="mlp", hidden=16, sampler="uniform", negatives=10, batch_size=64,
                          epochs=2, lr=0.01, seed=0, device="cpu", progress=False,
                          label_bias=True)
        t = Trainer(cfg, tiny)
        t.train()
        runs.append(t)
        if flag == "1":
            assert len(calls) > 20  # W and bias, every step
            calls.clear()
    assert not calls
    fused, plain = runs
    # Same arithmetic, float32 rounding may differ in the last bits over ~30 steps.
    torch.testing.assert_close(fused.model.W, plain.model.W, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.model.bias, plain.model.bias, rtol=1e-4, atol=1e-5)
    assert abs(fused.history[-1]["P@5"] - plain.history[-1]["P@5"]) < 0.02
