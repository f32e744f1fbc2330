"""CUDA paths against their CPU counterparts (skipped without a CUDA device; run by
``benchmarks/gpu_check.sh`` on a GPU machine).

Exact equality is asked only where the computation is deterministic on CUDA; where float
atomics (``index_add_``, sparse products) change the order of additions, results are compared
to rounding (see the README's "GPU" section on what is reproducible).
"""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmcviz import data
from xmcviz.core.models import build_model
from xmcviz.core.rundir import read_jsonl
from xmcviz.core.trainer import TrainConfig, Trainer, csr_to_torch
from xmcviz.hooks import make_hooks
from xmcviz.samplers import SAMPLER_NAMES, make_sampler
from xmcviz.samplers.base import Positives

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _faiss_gpu() -> bool:
    from xmcviz.samplers.faiss_index import faiss_has_gpu
    return faiss_has_gpu()


needs_faiss_gpu = pytest.mark.skipif(not torch.cuda.is_available() or not _faiss_gpu(),
                                     reason="needs faiss with GPU support")


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic("tiny", seed=0)


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mlp", hidden=32, sampler="uniform", negatives=10, batch_size=128,
                epochs=2, seed=0, device="cuda", progress=False)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------- the mlp on CSR
def test_mlp_csr_forward_backward_matches_cpu(tiny):
    torch.manual_seed(0)
    cpu = build_model("mlp", tiny.num_features, tiny.num_labels, hidden=32, dropout=0.0)
    gpu = build_model("mlp", tiny.num_features, tiny.num_labels, hidden=32, dropout=0.0)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    X = sp.csr_matrix(tiny.X_train[:64])
    e_cpu, e_gpu = cpu.embed(csr_to_torch(X)), gpu.embed(csr_to_torch(X, CUDA))
    torch.testing.assert_close(e_gpu.cpu(), e_cpu, rtol=1e-4, atol=1e-5)
    ids = torch.randint(0, tiny.num_labels, (64, 7))
    for m, e, i in ((cpu, e_cpu, ids), (gpu, e_gpu, ids.to(CUDA))):
        m.score(e, i).square().sum().backward()
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        g, h = p.grad, q.grad
        g = g.to_dense() if g.is_sparse else g
        h = h.to_dense() if h.is_sparse else h
        torch.testing.assert_close(h.cpu(), g, rtol=1e-3, atol=1e-4, msg=name)


def test_sparse_dropout_on_cuda(tiny):
    torch.manual_seed(0)
    m = build_model("mlp", tiny.num_features, tiny.num_labels, hidden=16, dropout=0.5).to(CUDA)
    m.train()
    x = csr_to_torch(sp.csr_matrix(tiny.X_train[:200]), CUDA)
    enc = m.encoder
    kept = []
    for seed in (1, 1, 2):
        torch.cuda.manual_seed(seed)
        v = torch.nn.functional.dropout(x.values(), enc.dropout, True)
        kept.append(v)
    assert torch.equal(kept[0], kept[1]) and not torch.equal(kept[0], kept[2])
    share = float((kept[0] == 0).float().mean())
    assert 0.4 < share < 0.6  # about half the stored values dropped, the rest scaled by 2
    torch.testing.assert_close(kept[0][kept[0] != 0], 2 * x.values()[kept[0] != 0])
    out = m.embed(x)
    assert out.is_cuda and torch.isfinite(out).all()
    out.sum().backward()
    assert m.encoder.linear.weight.grad.is_cuda


# --------------------------------------------------------------------------- samplers
# meta: its head trains with the model (covered through the trainer by gpu_smoke.py and by
# tests/test_samplers_meta.py).
@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if n != "meta"])
def test_sampler_with_a_cuda_generator(name, tiny):
    L, R, B = tiny.num_labels, 10, 32
    freq = np.bincount(sp.csr_matrix(tiny.Y_train).indices, minlength=L)
    s = make_sampler(name, num_labels=L, num_negatives=R, label_freq=freq, dataset=tiny,
                     device=CUDA)
    s.set_steps_per_epoch(10)
    g = torch.Generator(device=CUDA).manual_seed(0)
    W = torch.randn(L, 16, device=CUDA)
    emb = torch.randn(B, 16, device=CUDA)
    Y = sp.csr_matrix(tiny.Y_train)
    pos = Positives.from_csr(Y, np.arange(B), device=CUDA)
    if s.refresh_due(0, 0):
        s.refresh(W, 0, 0)
    neg = s.sample(emb, pos, epoch=0, generator=g, W=W, rows=torch.arange(B, device=CUDA))
    assert neg.ids.is_cuda and neg.mask.is_cuda
    ids = neg.ids[neg.mask]
    assert ((ids >= 0) & (ids < L)).all()
    # No positive is a negative.
    dense = torch.zeros(B, L, dtype=torch.bool, device=CUDA)
    dense[pos.ids.new_tensor(np.repeat(np.arange(B), pos.mask.sum(1).cpu().numpy())),
          pos.ids[pos.mask]] = True
    rows = torch.arange(B, device=CUDA)[:, None].expand_as(neg.ids)
    assert not dense[rows[neg.mask], neg.ids[neg.mask]].any()


@needs_faiss_gpu
def test_gpu_kmeans_and_warm_refresh():
    from xmcviz.core.topk import topk_labels
    from xmcviz.samplers.faiss_index import MipsIndex
    g = torch.Generator(device=CUDA).manual_seed(0)
    W = torch.randn(5000, 32, device=CUDA, generator=g)
    index = MipsIndex(clusters=64, nprobe=64)  # every cluster probed: exact search
    info = index.build(W)
    assert info["gpu"] and index.on_gpu and index.cluster_sizes().sum() == 5000
    q = torch.randn(20, 32, device=CUDA, generator=g)
    _, ids = index.search(q, 10)
    _, exact = topk_labels(q, W, 10)
    assert ids.is_cuda and torch.equal(ids, exact)
    W2 = W + 0.01 * torch.randn(5000, 32, device=CUDA, generator=g)
    info = index.refresh(W2)
    assert info["kind"] == "warm" and info["gpu"]
    torch.testing.assert_close(index.snapshot[0], W2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_index_on_a_second_gpu():
    from xmcviz.samplers.faiss_index import MipsIndex, faiss_has_gpu
    if not faiss_has_gpu():
        pytest.skip("needs faiss with GPU support")
    dev = torch.device("cuda:1")
    W = torch.randn(3000, 16, device=dev)
    index = MipsIndex(clusters=32, nprobe=32, device=dev)
    index.build(W)
    q = torch.randn(8, 16, device=dev)
    _, ids = index.search(q, 5)
    assert ids.device == dev
    assert torch.equal(ids, torch.topk(q @ W.T, 5).indices)


def test_full_sampler_bound_reads_gpu_memory():
    from xmcviz.samplers.full import BYTES_PER_ENTRY, FullSampler
    free = torch.cuda.mem_get_info(CUDA)[0]
    assert FullSampler(1000, device=CUDA).max_elements <= max(1, free // BYTES_PER_ENTRY)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("sparse", [True, False])
def test_every_default_hook_on_cuda(tiny, tmp_path, sparse):
    out = tmp_path / "run"
    tr = Trainer(_cfg(sampler="mips-s", warmup_epochs=1, epochs=2, sparse_updates=sparse,
                      out=str(out)),
                 dataset=tiny, hooks=make_hooks("ranks:1,freq,grad:1,staleness:1"))
    last = tr.train()
    assert np.isfinite(last["P@1"])
    for name in ("ranks", "freq", "grad", "staleness"):
        recs = read_jsonl(out / "hooks" / f"{name}.jsonl")
        assert recs, name
    assert all(0.0 <= r["recall"] <= 1.0 for r in read_jsonl(out / "hooks" / "staleness.jsonl"))


def test_resume_on_cuda_continues_the_run_with_the_index_on_the_gpu(tiny, tmp_path):
    full = Trainer(_cfg(sampler="mips-s", epochs=2, out=str(tmp_path / "full")), dataset=tiny)
    full.train()
    Trainer(_cfg(sampler="mips-s", epochs=1, out=str(tmp_path / "part")), dataset=tiny).train()
    resumed = Trainer(_cfg(sampler="mips-s", epochs=2, out=str(tmp_path / "part"), resume=True),
                      dataset=tiny)
    assert resumed.step == resumed.steps_per_epoch
    if _faiss_gpu():
        assert resumed.sampler.index.on_gpu
    resumed.train()
    a, b = full.history[-1], resumed.history[-1]
    # Float atomics on CUDA: equal up to rounding, not bit for bit.
    for k in ("P@1", "P@3", "P@5"):
        assert b[k] == pytest.approx(a[k], abs=0.02)


def test_a_cpu_checkpoint_is_refused_on_cuda(tiny, tmp_path):
    out = str(tmp_path / "run")
    Trainer(_cfg(epochs=1, device="cpu", out=out), dataset=tiny).train()
    with pytest.raises(ValueError, match="written on 'cpu'"):
        Trainer(_cfg(epochs=2, out=out, resume=True), dataset=tiny)


@pytest.mark.parametrize("method", ["adversarial", "uniform", "frequency", "nce"])
def test_softmax_methods_on_cuda(tiny, method):
    from xmcviz.softmax.trainer import SoftmaxConfig, SoftmaxTrainer
    tr = SoftmaxTrainer(SoftmaxConfig(sampler=method, epochs=1, batch_size=64, device="cuda",
                                      progress=False), dataset=tiny)
    rec = tr.train()
    assert np.isfinite(rec["acc"]) and np.isfinite(rec["loglik"])


def test_snr_comparison_on_cuda(tiny):
    from xmcviz.softmax.snr import snr_comparison
    from xmcviz.softmax.trainer import SoftmaxConfig, SoftmaxTrainer
    tr = SoftmaxTrainer(SoftmaxConfig(sampler="adversarial", epochs=1, batch_size=64,
                                      device="cuda", progress=False), dataset=tiny)
    tr.train()
    recs = snr_comparison(tr, probe_size=64, num_draws=8)
    assert {r["sampler"] for r in recs} == {"uniform", "frequency", "adversarial"}
    assert all(np.isfinite(r["snr"]) for r in recs)
