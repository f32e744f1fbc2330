"""Evaluation a CPU user can afford: a seeded test subsample during training, bounded top-k blocks."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmcviz import data
from xmcviz.cli import build_parser, config_from_args
from xmcviz.core.evaluate import evaluate, predict_topk
from xmcviz.core.rundir import read_jsonl
from xmcviz.core.topk import label_chunk_for, topk_labels
from xmcviz.core.trainer import TrainConfig, Trainer


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic("tiny", seed=0)  # 1000 train rows, 300 test rows, 64 labels


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mlp", hidden=16, sampler="uniform", negatives=10, batch_size=128,
                epochs=2, seed=3, device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_eval_rows_subsample_during_training_full_test_set_at_the_end(tiny, tmp_path):
    tr = Trainer(_cfg(eval_rows=50, eval_every_steps=4, out=str(tmp_path / "run")), dataset=tiny)
    tr.train()
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    n_test = tiny.X_test.shape[0]
    assert [r["eval_rows"] for r in recs[:-1]] == [50] * (len(recs) - 1)
    assert recs[-1]["eval_rows"] == n_test and recs[-1]["step"] == tr.step
    # The subsample is fixed: the same rows every time, a function of the seed.
    keep = tr.eval_subsample(50)
    assert len(np.unique(keep)) == 50 and keep.max() < n_test
    np.testing.assert_array_equal(keep, tr.eval_subsample(50))
    other = Trainer(_cfg(eval_rows=50, seed=4), dataset=tiny).eval_subsample(50)
    assert not np.array_equal(keep, other)
    # evaluate(rows) is evaluate() on exactly those rows.
    sub = tr.evaluate(50)
    with torch.no_grad():
        tr.model.eval()
        emb = tr.model.embed(_csr(tiny.X_test[keep]))
    ids = predict_topk(emb, tr.model.W.detach(), 5)
    expect = evaluate(ids, sp.csr_matrix(tiny.Y_test)[keep], ks=(1, 3, 5),
                      inv_propensity=tr.inv_propensity)
    assert sub == pytest.approx(expect)


def _csr(X):
    from xmcviz.core.trainer import csr_to_torch
    return csr_to_torch(sp.csr_matrix(X))


def test_eval_rows_larger_than_the_test_set_is_the_whole_set(tiny):
    tr = Trainer(_cfg(eval_rows=10_000, epochs=1), dataset=tiny)
    tr.train()
    assert tr.history[-1]["eval_rows"] == tiny.X_test.shape[0]
    assert tr.evaluate(10_000) == pytest.approx(tr.evaluate())


def test_eval_rows_validated_and_a_cli_flag(tiny):
    with pytest.raises(ValueError, match="eval_rows=0 is out of range"):
        _cfg(eval_rows=0).validate()
    args = build_parser().parse_args(["train", "--data", "synthetic:tiny", "--eval-rows", "200"])
    assert config_from_args(args).eval_rows == 200


def test_label_chunk_bounds_the_score_block():
    assert label_chunk_for(1024) == (1 << 24) // 1024
    assert label_chunk_for(1 << 30) == 1024  # never thinner than 1024 labels
    with pytest.raises(ValueError, match="rows=0"):
        label_chunk_for(0)


def test_chunked_topk_equals_one_block():
    g = torch.Generator().manual_seed(0)
    E, W = torch.randn(37, 8, generator=g), torch.randn(5000, 8, generator=g)
    s, i = topk_labels(E, W, 7, label_chunk=5000)
    s2, i2 = topk_labels(E, W, 7, label_chunk=333)
    torch.testing.assert_close(s, s2)
    assert torch.equal(i, i2)
    assert torch.equal(predict_topk(E, W, 7, row_batch=10), i)


def test_true_ranks_with_ties_and_chunks_equal_brute_force():
    from xmcviz.core.topk import true_ranks
    g = torch.Generator().manual_seed(1)
    E = torch.randn(6, 4, generator=g)
    W = torch.randint(-2, 3, (700, 4), generator=g).float()  # many exactly tied scores
    ids = torch.randint(0, 700, (6, 9), generator=g)
    s = E @ W.T
    expect = 1 + (s[:, None, :] > s.gather(1, ids)[:, :, None]).sum(2)
    for chunk in (700, 128, 33):
        assert torch.equal(true_ranks(E, W, ids, label_chunk=chunk), expect)
