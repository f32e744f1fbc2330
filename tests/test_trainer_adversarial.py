"""``sampler="adversarial"`` in the multi-label BCE trainer: registry, bias removal, resume."""
from __future__ import annotations

import json

import pytest
import torch

from xmcviz import data
from xmcviz.samplers.adversarial.bias import debiased_topk, find_log_pn_all
from xmcviz.cli import main
from xmcviz.core.evaluate import evaluate, inv_propensity
from xmcviz.core.rundir import read_jsonl
from xmcviz.samplers import SAMPLER_NAMES, make_sampler
from xmcviz.samplers.adversarial.sampler import AdversarialSampler
from xmcviz.core.trainer import TrainConfig, Trainer, csr_to_torch

TIMING = ("time_s", "eval_s")


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic("tiny", seed=0)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="linear", sampler="adversarial", negatives=8, batch_size=100, epochs=2,
                lr=0.01, seed=0, device="cpu", progress=False)
    return TrainConfig(**{**base, **kw})


def test_registry_needs_the_dataset(tiny):
    assert "adversarial" in SAMPLER_NAMES
    with pytest.raises(ValueError, match="needs dataset="):
        make_sampler("adversarial", num_labels=64, num_negatives=5)
    s = make_sampler("adversarial", num_labels=64, num_negatives=5, dataset=tiny, warmup_epochs=1)
    assert isinstance(s.inner, AdversarialSampler)
    assert find_log_pn_all(s) == s.inner.log_pn_all  # found through the warm-up wrapper
    assert find_log_pn_all(make_sampler("uniform", num_labels=64, num_negatives=5)) is None


def test_evaluate_removes_the_bias(tiny):
    t = Trainer(_cfg(epochs=1, eval_batch_size=37), tiny)
    t.train()
    m = t.model.eval()
    with torch.no_grad():
        raw = m.full_scores(m.embed(csr_to_torch(tiny.X_test)))
        adj = raw + t.sampler.log_pn_all(tiny.X_test)
    ips = inv_propensity(tiny.Y_train, 0.55, 1.5)
    got = t.evaluate()
    for k, v in evaluate(adj, tiny.Y_test, ks=(1, 3, 5), inv_propensity=ips).items():
        assert got[k] == pytest.approx(v, abs=1e-12)
    for k, v in evaluate(raw, tiny.Y_test, ks=(1, 3, 5), inv_propensity=ips).items():
        assert got[k + "_raw"] == pytest.approx(v, abs=1e-12)
    assert got["P@1"] != got["P@1_raw"]


def test_debiased_topk_streams_blocks(tiny, monkeypatch):
    import xmcviz.samplers.adversarial.bias as bias
    s = make_sampler("adversarial", num_labels=64, num_negatives=5, dataset=tiny)
    W = torch.randn(64, 300, generator=torch.Generator().manual_seed(0))
    emb = lambda Xb: csr_to_torch(Xb)  # noqa: E731  (linear model: E_x = x)
    full = debiased_topk(emb, tiny.X_test, W, s.log_pn_all, 5)
    monkeypatch.setattr(bias, "BLOCK_ELEMS", 64 * 7)  # 7 rows per block
    calls = []
    def log_pn(Xb):
        calls.append(Xb.shape[0])
        return s.log_pn_all(Xb)
    assert torch.equal(debiased_topk(emb, tiny.X_test, W, log_pn, 5), full)
    assert max(calls) == 7
    ref = torch.topk(csr_to_torch(tiny.X_test).to_dense() @ W.T + s.log_pn_all(tiny.X_test), 5).indices
    assert torch.equal(full, ref)


@pytest.mark.parametrize("block_rows", [None, 7])
def test_raw_and_debiased_topk_in_one_pass(tiny, monkeypatch, block_rows):
    """One embedding per row block gives predict_topk's raw top-k and debiased_topk's, exactly."""
    import xmcviz.samplers.adversarial.bias as bias_mod
    from xmcviz.samplers.adversarial.bias import raw_and_debiased_topk
    from xmcviz.core.evaluate import predict_topk
    s = make_sampler("adversarial", num_labels=64, num_negatives=5, dataset=tiny)
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(64, 300, generator=g), torch.randn(64, generator=g)
    W[5] = W[9]  # tied scores: both paths must break ties as before
    calls = []
    def emb(Xb):
        calls.append(Xb.shape[0])
        return csr_to_torch(Xb).to_dense()
    if block_rows is not None:
        monkeypatch.setattr(bias_mod, "BLOCK_ELEMS", 64 * block_rows)
    raw, adj = raw_and_debiased_topk(emb, tiny.X_test, W, s.log_pn_all, 5, bias=b, row_batch=30)
    assert sum(calls) == tiny.X_test.shape[0]  # every row embedded once
    assert max(calls) == (28 if block_rows else 30)  # whole score blocks of 7 rows
    E = csr_to_torch(tiny.X_test).to_dense()
    assert torch.equal(raw, predict_topk(E, W, 5, bias=b, row_batch=30))
    assert torch.equal(adj, debiased_topk(csr_to_torch, tiny.X_test, W, s.log_pn_all, 5, bias=b,
                                          row_batch=30))
    none = raw_and_debiased_topk(emb, tiny.X_test[:0], W, s.log_pn_all, 5)
    assert [tuple(t.shape) for t in none] == [(0, 5), (0, 5)]


def test_resume_with_adversarial_sampler(tiny, tmp_path):
    full = Trainer(_cfg(out=str(tmp_path / "full")), tiny)
    expect = full.train()
    cut = Trainer(_cfg(epochs=1, out=str(tmp_path / "cut")), tiny)
    cut.train()
    resumed = Trainer(_cfg(out=str(tmp_path / "cut"), resume=True), tiny)
    got = resumed.train()
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
    assert strip(got) == strip(expect)
    assert [strip(r) for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == \
        [strip(r) for r in read_jsonl(tmp_path / "full" / "metrics.jsonl")]


@pytest.mark.parametrize("warmup", [0, 1])
def test_resume_rebuilds_the_sampler_from_the_checkpoint(tiny, tmp_path, monkeypatch, warmup):
    """Resuming neither refits PCA + tree nor projects X_train twice, and ends where the
    uninterrupted run ends (also through the warm-up wrapper)."""
    import xmcviz.samplers.adversarial.sampler as adv
    from xmcviz.samplers.adversarial.pca import SparsePCA
    full = Trainer(_cfg(warmup_epochs=warmup, out=str(tmp_path / "full")), tiny)
    expect = full.train()
    cut = Trainer(_cfg(epochs=1, warmup_epochs=warmup, out=str(tmp_path / "cut")), tiny)
    cut.train()

    def no_fit(*a, **kw):
        raise AssertionError("resume refitted the adversarial sampler")
    projections = []
    transform = SparsePCA.transform_torch
    monkeypatch.setattr(adv, "fit_adversarial_sampler", no_fit)
    monkeypatch.setattr(SparsePCA, "transform_torch",
                        lambda self, X, *a, **kw: projections.append(X.shape[0]) or transform(self, X, *a, **kw))
    resumed = Trainer(_cfg(warmup_epochs=warmup, out=str(tmp_path / "cut"), resume=True), tiny)
    assert projections == [tiny.X_train.shape[0]]  # z of the training rows, once
    got = resumed.train()
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
    assert strip(got) == strip(expect)
    assert torch.equal(resumed.model.W, full.model.W)
    inner = lambda t: getattr(t.sampler, "inner", t.sampler)  # noqa: E731
    assert inner(resumed).fit_info == inner(cut).fit_info  # the checkpointed fit's
    assert torch.equal(inner(resumed).z_train, inner(full).z_train)


def test_cli_adversarial(tmp_path, capsys):
    rc = main(["train", "--data", "synthetic:tiny", "--model", "linear", "--sampler", "adversarial",
               "-R", "5", "--epochs", "1", "--no-progress", "--hooks", "none",
               "--out", str(tmp_path / "r")])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)
    assert "P@1_raw" in rec and "P@1" in rec
