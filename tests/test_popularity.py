"""The popularity hook against a brute-force recount, and its helpers."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from test_hooks import L, drive_windows, make_ctx
from xmcviz.hooks.base import RunInfo
from xmcviz.hooks.popularity import (CLASSES, NegativePopularity, frequency_ranks, median_from_hist,
                                     rank_bin, read_frequency_ranks)
from xmcviz.hooks.storage import read_jsonl
from xmcviz.samplers.base import SOURCE_NAMES


class _Data:
    def __init__(self, Y):
        self.Y_train = Y


def label_matrix(seed=0, rows=200):
    rng = np.random.default_rng(seed)
    # Zipf-like label popularity: a few head labels, a long tail.
    p = 1.0 / np.arange(1, L + 1) ** 1.1
    p = p[rng.permutation(L)]
    p /= p.sum()
    dense = np.zeros((rows, L), dtype=np.float32)
    for i in range(rows):
        dense[i, rng.choice(L, size=3, replace=False, p=p)] = 1
    return sp.csr_matrix(dense)


def test_frequency_ranks_and_classes():
    Y = label_matrix()
    rank, cls = frequency_ranks(Y, L)
    counts = np.asarray(Y.sum(0)).ravel()
    assert sorted(rank.tolist()) == list(range(1, L + 1))
    assert np.all(np.diff(counts[np.argsort(rank)]) <= 0)  # rank 1 is the most frequent
    # head labels hold (about) the first third of the positives, tail the last third
    head_mass = counts[cls == 0].sum() / counts.sum()
    assert cls[np.argmin(rank)] == 0 and cls[np.argmax(rank)] == 2
    assert 1 / 3 <= head_mass <= 1 / 3 + counts.max() / counts.sum()


def test_rank_bins_and_median():
    assert rank_bin(np.array([1, 2, 3, 4, 1024]), 1).tolist() == [0, 1, 1, 2, 10]
    assert rank_bin(torch.tensor([1, 2, 3, 4]), 4).tolist() == rank_bin(np.array([1, 2, 3, 4]), 4).tolist()
    hist = np.zeros(20)
    hist[8] = 10  # ranks in [4, 4*2^(1/4)) with 4 bins per octave
    med = median_from_hist(hist, 4)
    assert 4 <= med < 4 * 2 ** 0.25
    assert np.isnan(median_from_hist(np.zeros(5)))


def test_popularity_equals_recount(tmp_path):
    Y = label_matrix()
    info = RunInfo(run_dir=tmp_path, config={}, num_labels=L, num_features=6, steps_per_epoch=10,
                   device=torch.device("cpu"), dataset=_Data(Y))
    hook = NegativePopularity(every=1, window=3)
    hook.on_train_start(info)
    ctxs = drive_windows(hook)
    recs = read_jsonl(tmp_path / "hooks" / "popularity.jsonl")
    rank, cls = frequency_ranks(Y, L)
    np.testing.assert_array_equal(read_frequency_ranks(tmp_path), rank)
    bins = rank_bin(rank, 4)
    seen = set()
    for r in recs:
        steps = range(r["start_step"], r["end_step"])
        labels = []
        for c in ctxs:
            if c.step not in steps:
                continue
            if r["source"] == "positives":
                labels += c.positives.ids[c.positives.mask].tolist()
            else:
                code = SOURCE_NAMES.index(r["source"])
                m = c.negatives.mask & (c.negatives.source == code)
                labels += c.negatives.ids[m].tolist()
        labels = np.array(labels)
        assert r["draws"] == len(labels)
        expect = np.bincount(bins[labels], minlength=len(r["hist"]))
        np.testing.assert_array_equal(r["hist"], expect)
        for k, name in enumerate(CLASSES):
            assert r[name] == pytest.approx(np.mean(cls[labels] == k))
        seen.add((r["kind"], r["start_step"], r["end_step"]))
    assert seen == {("refresh", 0, 4), ("refresh", 4, 7), ("steps", 0, 3), ("steps", 3, 6), ("steps", 6, 7)}
    assert {r["source"] for r in recs} == {"mips", "uniform", "positives"}


def test_popularity_resume_drops_redone_steps(tmp_path):
    Y = label_matrix()
    mk = lambda resume: RunInfo(run_dir=tmp_path, config={}, num_labels=L, num_features=6,
                                steps_per_epoch=10, device=torch.device("cpu"), dataset=_Data(Y),
                                resume_step=resume)
    hook = NegativePopularity(window=2, by_refresh=False)
    hook.on_train_start(mk(None))
    for s in range(6):
        hook.before_update(make_ctx(step=s, seed=s))
    hook.close()
    before = read_jsonl(tmp_path / "hooks" / "popularity.jsonl")
    hook = NegativePopularity(window=2, by_refresh=False)
    hook.on_train_start(mk(4))
    hook.close()
    after = read_jsonl(tmp_path / "hooks" / "popularity.jsonl")
    assert after == [r for r in before if r["step"] < 4]
    assert hook._next_window == 1 + max(r["window"] for r in after)


def test_popularity_needs_training_labels_and_checks_window(tmp_path):
    with pytest.raises(ValueError, match="window=0"):
        NegativePopularity(window=0)
    info = RunInfo(run_dir=None, config={}, num_labels=L, num_features=6, steps_per_epoch=10,
                   device=torch.device("cpu"))
    with pytest.raises(ValueError, match="training labels"):
        NegativePopularity().on_train_start(info)
