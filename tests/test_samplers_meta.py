import json

import numpy as np
import pytest
import torch

from xmcviz import data
from xmcviz.cli import main
from xmcviz.core.rundir import read_jsonl
from xmcviz.core.trainer import Trainer, TrainConfig
from xmcviz.samplers import SOURCE_META, SOURCE_NAMES, SOURCE_UNIFORM, Positives, make_sampler
from xmcviz.samplers.clusters import LabelClusters
from xmcviz.samplers.meta import MetaSampler, default_meta_topk


@pytest.fixture(scope="module")
def tiny():
    return data.synthetic("tiny", seed=0)  # 1000 train rows, 300 features, 64 labels


def _cfg(**kw) -> TrainConfig:
    base = dict(model="mlp", hidden=16, sampler="meta", negatives=10, batch_size=128,
                epochs=2, lr=0.01, seed=0, device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _sampler(L=40, K=8, R=6, m=2, dim=5) -> MetaSampler:
    assign = np.arange(L) % K  # cluster k = labels k, k + K, ...
    return MetaSampler(L, R, LabelClusters.from_assign(assign, K), dim, topk=m, seed=0)


def test_negatives_are_never_positives_and_come_from_the_candidates():
    s = _sampler()
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    ids = torch.as_tensor(rng.integers(0, 40, (64, 5)))
    mask = torch.as_tensor(rng.random((64, 5)) < 0.8)
    pos = Positives(ids, mask)
    emb = torch.randn(64, 5)
    neg = s.sample(emb, pos, generator=gen)
    assert neg.ids.shape == (64, 6) and neg.mask.shape == (64, 6)
    top = torch.topk(s.head(emb), 2, dim=1).indices
    assign = s.clusters.assign
    for b in range(64):
        p = set(ids[b][mask[b]].tolist())
        kept = neg.ids[b][neg.mask[b]].tolist()
        assert not p & set(kept)                                   # no positive under mask True
        assert len(kept) == len(set(kept))                         # each label once
        allowed = set(top[b].tolist()) | {int(assign[j]) for j in p}
        for j, src in zip(neg.ids[b].tolist(), neg.source[b].tolist()):
            if src == SOURCE_META:
                assert int(assign[j]) in allowed                   # from a candidate cluster
    assert SOURCE_NAMES[SOURCE_META] == "meta"


def test_too_few_candidates_are_padded_with_uniform_negatives():
    # One cluster per row of 4 labels and R = 10: 6+ slots come from the uniform draw.
    s = MetaSampler(40, 10, LabelClusters.from_assign(np.arange(40) // 4, 10), 3, topk=1,
                    add_positive_clusters=False)
    pos = Positives(torch.tensor([[0], [39]]), torch.tensor([[True], [True]]))
    neg = s.sample(torch.randn(2, 3), pos, generator=torch.Generator().manual_seed(1))
    meta = neg.source == SOURCE_META
    assert meta.sum(1).max() <= 4 and (neg.source[~meta] == SOURCE_UNIFORM).all()
    assert not ((neg.ids == pos.ids) & neg.mask).any()


def test_without_dim_the_head_is_built_at_the_first_batch():
    s = MetaSampler(40, 6, LabelClusters.from_assign(np.arange(40) % 8, 8), None, topk=2)
    assert s.trainable() == []
    s.sample(torch.randn(4, 7), Positives(torch.zeros(4, 1, dtype=torch.long),
                                           torch.ones(4, 1, dtype=torch.bool)))
    assert s.head.weight.shape == (8, 7) and len(s.trainable()) == 2
    t = MetaSampler(40, 6, LabelClusters.from_assign(np.arange(40) % 8, 8), None, topk=2)
    t.load_state_dict(s.state_dict())
    assert torch.equal(t.head.weight, s.head.weight)


def test_the_head_learns_separable_clusters():
    # Each row's positives lie in the cluster picked by the sign pattern of its input.
    torch.manual_seed(0)
    K, per, d = 4, 5, 6
    s = MetaSampler(K * per, 4, LabelClusters.from_assign(np.arange(K * per) // per, K), d,
                    topk=1, seed=0)
    opt = torch.optim.Adam(s.trainable(), lr=0.05)
    centres = torch.randn(K, d) * 3

    def batch(n=128):
        c = torch.randint(0, K, (n,))
        x = centres[c] + torch.randn(n, d) * 0.3
        ids = torch.stack([c * per + torch.randint(0, per, (n,)) for _ in range(2)], 1)
        return x, Positives(ids, torch.ones_like(ids, dtype=torch.bool))

    for _ in range(150):
        x, pos = batch()
        loss = s.auxiliary_loss(x, pos)
        opt.zero_grad()
        loss.backward()
        opt.step()
    s.eval_stats()
    x, pos = batch(512)
    s.sample(x, pos)
    assert s.eval_stats()["meta_recall"] > 0.95


def test_default_topk_covers_R_and_bad_values_are_named():
    assert default_meta_topk(1000, 100, 32) == 4 and default_meta_topk(10, 9, 2) == 2
    with pytest.raises(ValueError, match="meta_topk=9 is out of range"):
        _sampler(K=8, m=9)
    with pytest.raises(ValueError, match="meta_loss_weight=0"):
        MetaSampler(40, 6, LabelClusters.from_assign(np.arange(40) % 8, 8), 5, loss_weight=0)


def test_make_sampler_builds_meta_from_the_training_data(tiny):
    s = make_sampler("meta", num_labels=tiny.num_labels, num_negatives=10, dataset=tiny, dim=16,
                     meta_clusters=8, seed=0)
    assert isinstance(s, MetaSampler) and s.num_clusters == 8 and s.topk == 2
    sizes = torch.bincount(s.clusters.assign, minlength=8)
    assert int(sizes.max() - sizes.min()) <= 1
    assert s.setup_info["cluster_seconds"] > 0 and not s.setup_info["from_checkpoint"]


def test_trains_and_logs_the_meta_classifier(tiny, tmp_path):
    t = Trainer(_cfg(out=str(tmp_path / "run"), eval_every_steps=4), tiny)
    t.train()
    recs = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(0 <= r["meta_recall"] <= 1 and r["meta_loss"] > 0 for r in recs)
    assert recs[-1]["meta_recall"] > recs[0]["meta_recall"]  # the head learns
    setup = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]["sampler_setup"]
    assert setup["clusters"] == 8 and setup["cluster_seconds"] > 0
    assert len(t.optimizers) == 3  # label rows, encoder, meta head


def test_resumed_run_ends_like_uninterrupted_and_does_not_recluster(tiny, tmp_path, monkeypatch):
    full = Trainer(_cfg(out=str(tmp_path / "full"), epochs=3), tiny)
    full.train()
    cut = Trainer(_cfg(out=str(tmp_path / "cut"), epochs=2), tiny)
    cut.train()

    import xmcviz.samplers.meta as meta_mod

    def no_clustering(*a, **k):
        raise AssertionError("a resumed run reclustered the labels")
    monkeypatch.setattr(meta_mod, "cluster_labels", no_clustering)
    resumed = Trainer(_cfg(out=str(tmp_path / "cut"), epochs=3, resume=True), tiny)
    resumed.train()
    assert torch.equal(resumed.model.W, full.model.W)
    assert torch.equal(resumed.sampler.head.weight, full.sampler.head.weight)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rs]
    assert strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == \
        strip(read_jsonl(tmp_path / "full" / "metrics.jsonl"))
    assert resumed.sampler.setup_info["from_checkpoint"]


TRAIN = ["train", "--data", "synthetic:tiny", "--hidden", "16", "--negatives", "10",
         "--batch-size", "128", "--epochs", "1", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("extra, named", [
    (["--sampler", "meta", "--meta-clusters", "1"], "meta_clusters=1"),
    (["--sampler", "meta", "--meta-clusters", "100"], "meta_clusters=100"),    # K > L
    (["--sampler", "meta", "--meta-clusters", "8", "--meta-topk", "9"], "meta_topk=9"),
    (["--sampler", "meta", "--meta-topk", "0"], "meta_topk=0"),
    (["--sampler", "meta", "--meta-loss-weight", "-1"], "meta_loss_weight=-1"),
    (["--sampler", "uniform", "--meta-topk", "2"], "meta_topk=2"),            # not read
])
def test_cli_validates_the_meta_options(tmp_path, capsys, extra, named):
    out = tmp_path / "run"
    rc = main(TRAIN + ["--out", str(out)] + extra)
    err = capsys.readouterr().err
    assert rc == 2 and named in err and "Traceback" not in err
    assert not out.exists()


def test_cli_trains_with_meta(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN + ["--sampler", "meta", "--meta-topk", "2", "--out", str(out)]) == 0
    assert "meta_recall" in read_jsonl(out / "metrics.jsonl")[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_meta_trains_on_cuda(tiny):
    t = Trainer(_cfg(device="cuda", epochs=1), tiny)
    t.train()
    assert t.sampler.head.weight.is_cuda and t.history[-1]["meta_recall"] is not None


def test_meta_vs_mips_notebook_runs_under_papermill(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pm = pytest.importorskip("papermill")
    from pathlib import Path
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    src = notebooks / "meta_vs_mips.ipynb"
    committed = nbformat.read(src, as_version=4)
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code")
    params = pm.inspect_notebook(str(src))
    assert {"seed", "device", "output_dir", "data", "epochs"} <= set(params)
    out = tmp_path / "out"
    pm.execute_notebook(str(src), str(tmp_path / "run.ipynb"), kernel_name="python3",
                        cwd=str(notebooks), progress_bar=False, store_widget_state=False,
                        parameters=dict(data="synthetic:tiny", negatives=8, mips_k=3, epochs=2,
                                        meta_clusters=8, eval_every_steps=4, ranks_every=2,
                                        threads=1, seed=0, device="cpu", output_dir=str(out)))
    res = json.loads((out / "results.json").read_text())
    assert list(res["final"]) == ["uniform", "mips-a", "mips-s", "meta"]
    assert set(res["figures"]) == {"P@5", "meta recall", "hard ranks"}
    assert [t["name"] for t in res["figures"]["meta recall"]] == ["meta"]
    assert {t["name"] for t in res["figures"]["hard ranks"]} == {"mips-a", "mips-s", "meta"}
    assert all(len(t["y"]) > 0 for f in res["figures"].values() for t in f)


def test_instruments_see_meta_negatives(tiny, tmp_path):
    from xmcviz.hooks import make_hooks
    out = tmp_path / "run"
    Trainer(_cfg(out=str(out), epochs=1, hide_labels=0.2), tiny,
            hooks=make_hooks("ranks:2,freq,grad:2,hidden:2")).train()
    hooks = out / "hooks"
    ranks = read_jsonl(hooks / "ranks.jsonl")
    assert ranks and all("median_rank_meta" in r for r in ranks)
    assert {"meta", "all"} <= {r["source"] for r in read_jsonl(hooks / "freq.jsonl")}
    assert read_jsonl(hooks / "grad.jsonl")
    assert "meta" in {r.get("source") for r in read_jsonl(hooks / "hidden.jsonl")}
