"""Hidden positives: the split, the hook's counts against a recount, and a training run."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from test_hooks import B, L, R, drive_windows
from xmcviz.core.trainer import TrainConfig, Trainer
from xmcviz.data import synthetic
from xmcviz.data.hide import hidden_labels, hide_positives, split_positives
from xmcviz.hooks import make_hooks
from xmcviz.hooks.base import RunInfo
from xmcviz.hooks.hidden import HiddenPositives
from xmcviz.hooks.storage import read_jsonl
from xmcviz.samplers.base import SOURCE_NAMES


def test_split_is_exact_disjoint_and_seeded():
    ds = synthetic("tiny", seed=0)
    Y = ds.Y_train
    vis, hid = split_positives(Y, 0.2, seed=3)
    assert hid.nnz == round(0.2 * Y.nnz) and vis.nnz + hid.nnz == Y.nnz
    assert (vis + hid - Y).count_nonzero() == 0           # together: exactly Y
    assert vis.multiply(hid).nnz == 0                      # disjoint
    assert vis.has_canonical_format and hid.has_canonical_format and vis.dtype == np.float32
    again, _ = split_positives(Y, 0.2, seed=3)
    other, _ = split_positives(Y, 0.2, seed=4)
    assert (again != vis).nnz == 0 and (other != vis).nnz > 0
    with pytest.raises(ValueError, match="hide_labels=1.0"):
        split_positives(Y, 1.0)


def test_hide_positives_keeps_the_rest():
    ds = synthetic("tiny", seed=0)
    h = hide_positives(ds, 0.3, seed=1)
    assert h.X_train is ds.X_train and h.Y_test is ds.Y_test
    assert h.meta["hidden_positives"] == hidden_labels(h).nnz > 0
    assert hidden_labels(ds) is None


class _Data:
    def __init__(self, Y_train, hidden):
        self.Y_train = Y_train
        self.meta = {"Y_hidden": hidden}
        self.X_train = sp.csr_matrix((B * 10, 6), dtype=np.float32)


def test_hidden_hook_equals_recount(tmp_path):
    rng = np.random.default_rng(0)
    rows = B * 10
    dense_hidden = (rng.random((rows, L)) < 0.15).astype(np.float32)
    dense_vis = ((rng.random((rows, L)) < 0.1) & (dense_hidden == 0)).astype(np.float32)
    hidden, visible = sp.csr_matrix(dense_hidden), sp.csr_matrix(dense_vis)
    info = RunInfo(run_dir=tmp_path, config={}, num_labels=L, num_features=6, steps_per_epoch=10,
                   device=torch.device("cpu"), dataset=_Data(visible, hidden))
    hook = HiddenPositives(window=3, rank_every=1, probe=B)
    hook.on_train_start(info)
    ctxs = drive_windows(hook)
    recs = [r for r in read_jsonl(tmp_path / "hooks" / "hidden.jsonl") if r["kind"] != "eval"]
    assert {(r["kind"], r["start_step"], r["end_step"]) for r in recs} == {
        ("refresh", 0, 4), ("refresh", 4, 7), ("steps", 0, 3), ("steps", 3, 6), ("steps", 6, 7)}
    for r in recs:
        draws = hits = 0
        expected = 0.0
        for c in ctxs:
            if not r["start_step"] <= c.step < r["end_step"]:
                continue
            for i in range(B):
                row = int(c.rows[i])
                for j in range(R):
                    if not c.negatives.mask[i, j]:
                        continue
                    if r["source"] != "all" and SOURCE_NAMES[int(c.negatives.source[i, j])] != r["source"]:
                        continue
                    draws += 1
                    hits += int(dense_hidden[row, int(c.negatives.ids[i, j])] > 0)
                    expected += dense_hidden[row].sum() / (L - dense_vis[row].sum())
        assert (r["draws"], r["hits"]) == (draws, hits)
        assert r["share"] == pytest.approx(hits / draws)
        assert r["base_share"] == pytest.approx(expected / draws)
        assert r["ranked_hits"] == hits  # every step ranked, all rows probed
        if hits:
            assert 1 <= r["median_hit_rank"] <= L


def test_hidden_hook_is_silent_without_hidden_labels(tmp_path):
    info = RunInfo(run_dir=tmp_path, config={}, num_labels=L, num_features=6, steps_per_epoch=10,
                   device=torch.device("cpu"), dataset=_Data(sp.csr_matrix((1, L)), None))
    info.dataset.meta = {}
    hook = HiddenPositives()
    hook.on_train_start(info)
    assert not hook.wants(0)
    hook.close()
    assert not (tmp_path / "hooks" / "hidden.jsonl").exists()


def test_training_with_hidden_labels(tmp_path):
    cfg = TrainConfig(data="synthetic:tiny", model="linear", sampler="uniform", negatives=20,
                      epochs=2, hide_labels=0.2, out=str(tmp_path / "run"), progress=False)
    trainer = Trainer(cfg, hooks=make_hooks("hidden"))
    full = synthetic("tiny", seed=0)
    assert trainer.dataset.Y_train.nnz == full.Y_train.nnz - round(0.2 * full.Y_train.nnz)
    trainer.train()
    recs = read_jsonl(tmp_path / "run" / "hooks" / "hidden.jsonl")
    evals = [r for r in recs if r["kind"] == "eval"]
    assert len(evals) == 2 and all(0.0 <= r["recall@5"] <= r["recall@10"] <= 1.0 for r in evals)
    windows = [r for r in recs if r["kind"] == "steps" and r["source"] == "uniform"]
    hits = sum(r["hits"] for r in windows)
    expected = sum(r["base_share"] * r["draws"] for r in windows)
    assert hits > 0
    assert hits == pytest.approx(expected, rel=0.35)  # uniform hits hidden positives at the base rate
    import json
    assert json.loads((tmp_path / "run" / "config.json").read_text())["hide_labels"] == 0.2
