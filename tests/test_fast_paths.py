"""The fast paths (xmcviz.core.fast) against the reference implementations they replace.

Each test runs the same computation with the switch on and inside ``fast.reference()`` and
compares: scores and gradients of the model, optimiser steps, sampler outputs from the same
generator, and a short training run.
"""
import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

import xmcviz.core.fast.cpu_kernels
import xmcviz.core.fast.score
import xmcviz.core.models
import xmcviz.core.optim
from xmcviz.core import fast
from xmcviz.core.models import MLPEncoder, XMCModel
from xmcviz.core.optim import RowSparseAdam
from xmcviz.core.trainer import csr_to_torch
from xmcviz.samplers.base import Positives
from xmcviz.samplers.mips import assemble_negatives
from xmcviz.samplers.ops import (first_occurrence, nth_negative, sorted_positive_table,
                                 uniform_excluding)

numba_missing = importlib.util.find_spec("numba") is None


def both(fn):
    """``(fn() with the fast paths on, fn() with the references)``."""
    with_fast = fn()
    with fast.reference():
        return with_fast, fn()


# ---------------------------------------------------------------------------- the switch
def test_switch_reads_the_environment_and_the_reference_block(monkeypatch):
    monkeypatch.delenv("XMCVIZ_FAST", raising=False)
    assert fast.enabled()
    with fast.reference():
        assert not fast.enabled()
        with fast.reference():
            assert not fast.enabled()
        assert not fast.enabled()  # the inner block restores the outer one's state
    assert fast.enabled()
    monkeypatch.setenv("XMCVIZ_FAST", "0")
    assert not fast.enabled()
    monkeypatch.setenv("XMCVIZ_FAST", "1")
    assert fast.enabled()


def test_reference_block_restores_the_switch_after_an_error():
    with pytest.raises(KeyError):
        with fast.reference():
            raise KeyError("x")
    assert fast.enabled()


def test_switch_off_runs_none_of_the_fast_code(monkeypatch, count_calls):
    """With XMCVIZ_FAST=0 neither the fused score Functions nor the numba kernels run."""
    scores = count_calls(xmcviz.core.models, "fast_scores")
    kernels = count_calls(xmcviz.core.fast.cpu_kernels, "_kernels")

    def step():
        m = XMCModel(nn.Identity(), 30, 4, label_bias=True)
        opt = RowSparseAdam(m.parameters(), lr=0.1)
        m.score(torch.randn(3, 4), torch.randint(0, 30, (3, 5))).sum().backward()
        opt.step()
    step()
    assert scores and (kernels or numba_missing)  # the spies see the fast paths run
    scores.clear(), kernels.clear()
    monkeypatch.setenv("XMCVIZ_FAST", "0")
    step()
    assert not scores and not kernels
    assert not xmcviz.core.fast.cpu_kernels.kernels_available(torch.zeros(2, 2))


# ---------------------------------------------------------------------------- model scores
def _mlp_batch(B=6, D=50, seed=0):
    X = sp.random(B, D, density=0.2, format="csr", dtype=np.float32,
                  random_state=np.random.default_rng(seed))
    X.sort_indices()
    return csr_to_torch(X)


def _score_run(encoder_kind, label_bias, sparse_grad, masked, path):
    """Scores and every gradient of one forward / backward, as plain tensors."""
    B, K, L = 6, 9, 40
    torch.manual_seed(3)
    if encoder_kind == "mlp":
        enc, x, d = MLPEncoder(50, hidden=12, dropout=0.0), _mlp_batch(B), 12
    else:  # the linear model's wide, mostly-zero input without gradient
        d = 300
        g = torch.Generator().manual_seed(0)
        x = torch.rand(B, d, generator=g) * (torch.rand(B, d, generator=g) < 0.05)
        enc = nn.Identity()
    m = XMCModel(enc, L, d, label_bias=label_bias, sparse_grad=sparse_grad)
    if label_bias:
        with torch.no_grad():
            m.bias.normal_()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, L, (B, K), generator=g)
    ids[0, :3] = ids[0, 3]  # duplicates within a row
    mask = torch.rand(B, K, generator=g) > 0.3 if masked else None
    s = m.score(m.embed(x), ids, mask=mask, path=path)
    (s * torch.randn(B, K, generator=g)).sum().backward()
    out = {"scores": s.detach()}
    for name, p in m.named_parameters():
        grad = p.grad
        if grad.is_sparse:
            out[name + " rows"] = sorted(set(grad.coalesce().indices()[0].tolist()))
            grad = grad.to_dense()
        out[name] = grad
    return out


def _assert_same(a, b, **tol):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], msg=key, **tol)
        else:
            assert a[key] == b[key], key  # the same rows in the sparse gradient


@pytest.mark.parametrize("path", ["auto", "gather", "unique"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("sparse_grad", [True, False])
@pytest.mark.parametrize("label_bias", [False, True])
def test_scores_and_gradients_equal_the_reference(path, masked, sparse_grad, label_bias):
    """W, bias and the encoder's weights get the reference's gradients on every path."""
    fast_out, ref = both(lambda: _score_run("mlp", label_bias, sparse_grad, masked, path))
    assert {"W", "encoder.linear.weight", "encoder.linear.bias"} <= fast_out.keys()
    assert ("W rows" in ref) == sparse_grad  # sparse gradients in both, or dense in both
    if masked and sparse_grad:  # masked labels are left out of the rows the optimiser moves
        assert len(ref["W rows"]) < 40
    _assert_same(fast_out, ref)


@pytest.mark.parametrize("path", ["auto", "sparse"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_sparse_input_path_equals_the_reference(path, masked, sparse_grad, count_calls):
    calls = count_calls(xmcviz.core.fast.score._SparseScores, "apply")
    fast_out, ref = both(lambda: _score_run("identity", True, sparse_grad, masked, path))
    assert calls == [1]  # the fast run took the sparse path, the reference did not
    _assert_same(fast_out, ref)


def test_large_blocks_take_the_unique_path_with_reference_results(monkeypatch, count_calls):
    monkeypatch.setattr(XMCModel, "gather_limit", 10)
    calls = count_calls(torch, "unique")
    fast_out, ref = both(lambda: _score_run("mlp", True, True, True, "auto"))
    assert len(calls) == 1  # unique ids in the fast run only
    _assert_same(fast_out, ref)


def test_row_gradient_of_the_fused_path_is_sorted_and_distinct():
    """The optimiser can then skip its coalescing sort (autograd drops the flag itself)."""
    m = XMCModel(nn.Identity(), 20, 3)
    ids = torch.tensor([[4, 1, 4], [1, 9, 4]])
    emb = torch.randn(2, 3)
    m.score(emb, ids).sum().backward()
    assert m.W.grad._indices()[0].tolist() == [1, 4, 9]
    expect = torch.stack([emb[0] + emb[1], 2 * emb[0] + emb[1], emb[1]])
    torch.testing.assert_close(m.W.grad._values(), expect)


# ---------------------------------------------------------------------------- optimiser
def _adam_run(steps=6):
    torch.manual_seed(0)
    L, d = 50, 7
    W = nn.Parameter(torch.randn(L, d))
    b = nn.Parameter(torch.randn(L))
    opt = RowSparseAdam([W, b], lr=0.05, betas=(0.8, 0.95))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 20, (30,), generator=g)  # duplicates; rows >= 20 untouched
        W.grad = torch.sparse_coo_tensor(ids[None], torch.randn(30, d, generator=g), (L, d),
                                         check_invariants=True)
        b.grad = torch.sparse_coo_tensor(ids[None], torch.randn(30, generator=g), (L,),
                                         check_invariants=True)
        opt.step()
    state = opt.state_dict()["state"]
    return {"W": W.detach(), "bias": b.detach(),
            **{f"{k} {i}": state[i][k] for i in (0, 1) for k in ("exp_avg", "exp_avg_sq")}}


def test_optimiser_steps_equal_the_reference(count_calls):
    calls = count_calls(xmcviz.core.optim, "fused_adam_rows")
    fast_out, ref = both(_adam_run)
    assert len(calls) == (0 if numba_missing else 12)  # W and bias, 6 steps, fast run only
    _assert_same(fast_out, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(ref["W"][20:], fast_out["W"][20:])  # untouched rows stay as they were


# ---------------------------------------------------------------------------- samplers
def _positives(B, width, L, seed):
    rng = np.random.default_rng(seed)
    ids = torch.as_tensor(rng.integers(0, L, size=(B, width)))
    mask = torch.as_tensor(rng.random((B, width)) < 0.7)
    mask[0] = False             # no positives
    ids[1], mask[1] = ids[1, 0], True  # one positive repeated
    return Positives(ids, mask)


@pytest.mark.parametrize("width", [0, 3, 16, 40])  # narrow tables take the broadcast count
def test_uniform_negatives_equal_the_reference(width):
    L, pos = 200, _positives(64, max(width, 2), 200, width)
    if width == 0:  # no positive column at all
        pos = Positives(pos.ids[:, :0], pos.mask[:, :0])
    table, _ = sorted_positive_table(pos)
    v = torch.randint(0, L - width, (64, 50), generator=torch.Generator().manual_seed(2))

    def run():
        drawn = uniform_excluding(pos, L, 30, torch.Generator().manual_seed(5))
        table_, count = sorted_positive_table(pos)
        return {"nth": nth_negative(table, v), "ids": drawn[0], "ok": drawn[1],
                "table": table_, "count": count}
    fast_out, ref = both(run)
    for key in ref:
        assert torch.equal(fast_out[key], ref[key]), key


def test_first_occurrence_equals_the_reference():
    g = torch.Generator().manual_seed(0)
    for B, n, top in ((32, 40, 10), (8, 200, 1 << 40), (1, 1, 3), (0, 5, 3)):
        ids = torch.randint(0, top, (B, n), generator=g)
        valid = torch.rand(B, n, generator=g) < 0.8
        for mask in (valid, None):
            fast_out, ref = both(lambda: first_occurrence(ids, mask))
            assert torch.equal(fast_out, ref)


@pytest.mark.parametrize("k, R", [(5, 40), (40, 40), (1, 3)])
def test_mips_assembly_equals_the_reference(k, R):
    B, L, width = 48, 120, 6
    pos = _positives(B, width, L, 7)
    rng = np.random.default_rng(3)
    cand = torch.as_tensor(np.stack([rng.permutation(L)[:k + width] for _ in range(B)]))
    cand[2, -3:] = -1  # unfilled search results

    def run():
        neg = assemble_negatives(cand, pos, k, R, L, torch.Generator().manual_seed(11))
        return neg.ids, neg.mask, neg.source
    fast_out, ref = both(run)
    for a, b in zip(fast_out, ref):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("sampler", ["uniform", "mips-s"])
def test_training_run_gives_the_same_metrics(sampler):
    from xmcviz import data
    from xmcviz.core.trainer import TrainConfig, Trainer
    tiny = data.synthetic("tiny", seed=0)

    def run():
        cfg = TrainConfig(model="mlp", hidden=16, sampler=sampler, negatives=10, batch_size=64,
                          epochs=1, lr=0.01, seed=0, device="cpu", progress=False,
                          label_bias=True)
        t = Trainer(cfg, tiny)
        t.train()
        return t
    fast_run, ref_run = both(run)
    torch.testing.assert_close(fast_run.model.W, ref_run.model.W, rtol=1e-4, atol=1e-5)
    last_fast, last_ref = fast_run.history[-1], ref_run.history[-1]
    metrics = [key for key in last_ref if key.startswith(("P@", "nDCG@", "PSP@", "PSnDCG@"))]
    assert len(metrics) >= 4
    for key in metrics:
        assert last_fast[key] == pytest.approx(last_ref[key], abs=1e-4), key
    assert last_fast["loss"] == pytest.approx(last_ref["loss"], rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_cuda_scores_and_sampler_ops_equal_the_reference(sparse_grad):
    """On CUDA the fast score paths (torch's row gradient there) and the samplers' ops."""
    dev = torch.device("cuda")

    def run():
        torch.manual_seed(0)
        m = XMCModel(nn.Identity(), 40, 8, label_bias=True, sparse_grad=sparse_grad).to(dev)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 40, (5, 9), generator=g).to(dev)
        mask = (torch.rand(5, 9, generator=g) > 0.3).to(dev)
        emb = torch.randn(5, 8, generator=g).to(dev).requires_grad_()
        s = m.score(emb, ids, mask=mask)
        (s * torch.randn(5, 9, generator=g).to(dev)).sum().backward()
        first = first_occurrence(ids, mask)
        pos = Positives(ids[:, :3].contiguous(), mask[:, :3].contiguous())
        uni, ok = uniform_excluding(pos, 40, 6, torch.Generator(dev).manual_seed(2), dev)
        return {"scores": s.detach(), "W": m.W.grad.to_dense(), "bias": m.bias.grad.to_dense(),
                "emb": emb.grad, "first": first, "uniform": uni, "ok": ok}
    fast_out, ref = both(run)
    _assert_same(fast_out, ref)
