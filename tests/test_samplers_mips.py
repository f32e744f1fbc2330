"""MIPS-a / MIPS-s sampling, refresh cadence and the warm-up switch."""
import io

import numpy as np
import pytest
import torch

from xmcviz.samplers import (SOURCE_MIPS, SOURCE_UNIFORM, MipsSampler, Positives, UniformSampler,
                             WarmupSampler)

L, R, B, D, K = 300, 20, 24, 16, 17


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g), torch.randn(L, D, generator=g), torch.randn(L, generator=g)


def random_positives(seed: int) -> Positives:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 5, (B,), generator=g)
    counts[0], counts[1] = 0, 120
    P = int(counts.max())
    ids = torch.stack([torch.randperm(L, generator=g)[:P] for _ in range(B)])
    mask = torch.arange(P)[None] < counts[:, None]
    return Positives(torch.where(mask, ids, 0), mask)


def exact_top(emb, W, b, pos: Positives, k: int) -> torch.Tensor:
    s = emb @ W.T + (0 if b is None else b)
    s = s.masked_fill(_dense(pos), float("-inf"))
    return torch.topk(s, k, dim=1).indices


def _dense(pos: Positives) -> torch.Tensor:
    dense = torch.zeros(pos.ids.shape[0], L, dtype=torch.bool)
    for i in range(pos.ids.shape[0]):
        dense[i, pos.ids[i][pos.mask[i]]] = True
    return dense


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mips_s_has_exactly_k_from_mips_and_mips_a_all():
    emb, W, _ = data()
    pos = random_positives(1)
    s = MipsSampler(L, R, 5, clusters=K, nprobe=K)
    s.refresh(W, 0, 0)
    neg = s.sample(emb, pos, generator=gen())
    assert s.name == "mips-s"
    assert ((neg.source == SOURCE_MIPS).sum(1) == 5).all() and ((neg.source == SOURCE_UNIFORM).sum(1) == R - 5).all()
    assert (neg.source[:, :5] == SOURCE_MIPS).all() and neg.mask[:, :5].all()
    a = MipsSampler(L, R, R, clusters=K, nprobe=K)
    a.refresh(W, 0, 0)
    neg = a.sample(emb, pos, generator=gen())
    assert a.name == "mips-a" and (neg.source == SOURCE_MIPS).all() and neg.mask.all()


@pytest.mark.parametrize("with_bias", [False, True])
def test_exhaustive_mips_equals_exact_top_k(with_bias):
    emb, W, b = data(2)
    b = b if with_bias else None
    pos = random_positives(3)
    s = MipsSampler(L, R, R, clusters=K, nprobe=K)  # nprobe = K: every cluster searched
    s.refresh(W, 0, 0, bias=b)
    neg = s.sample(emb, pos, generator=gen())
    want = exact_top(emb, W, b, pos, R)
    assert torch.equal(neg.ids, want)
    scores = emb @ W.T + (0 if b is None else b)
    torch.testing.assert_close(scores.gather(1, neg.ids), scores.gather(1, want))
    assert s.last_unfilled == 0


def test_rows_whose_best_labels_are_positive_still_get_k():
    emb, W, _ = data(4)
    top10 = torch.topk(emb @ W.T, 10, dim=1).indices
    pos = Positives(top10, torch.ones_like(top10, dtype=torch.bool))
    s = MipsSampler(L, 5, 5, clusters=K, nprobe=K)
    s.refresh(W, 0, 0)
    neg = s.sample(emb, pos, generator=gen())
    assert neg.mask.all()
    assert torch.equal(neg.ids, torch.topk(emb @ W.T, 15, dim=1).indices[:, 10:])


def test_unfilled_slots_are_masked_and_counted():
    emb, W, _ = data(5)
    s = MipsSampler(L, 10, 10, clusters=150, nprobe=1)  # ~2 labels per cluster, 1 cluster searched
    s.refresh(W, 0, 0)
    pos = random_positives(6)
    neg = s.sample(emb, pos, generator=gen())
    unfilled = int((~neg.mask).sum())
    assert s.last_unfilled == unfilled > 0 and s.unfilled_total == unfilled
    dense = _dense(pos)
    assert not dense.gather(1, neg.ids)[neg.mask].any()


def test_sample_before_refresh_fails():
    s = MipsSampler(L, R, 5)
    assert s.refresh_due(7, 0)  # never built: due whatever the step
    with pytest.raises(RuntimeError, match="refresh"):
        s.sample(torch.zeros(2, D), random_positives(0), generator=gen())


def run_schedule(s, steps: int, steps_per_epoch: int, W) -> list[int]:
    due = []
    for step in range(steps):
        if s.refresh_due(step, step // steps_per_epoch):
            s.refresh(W, step, step // steps_per_epoch)
            due.append(step)
    return due


def test_refresh_every_p_steps():
    _, W, _ = data()
    s = MipsSampler(L, R, 5, refresh_every=7)
    s.set_steps_per_epoch(10)
    assert run_schedule(s, 30, 10, W) == [0, 7, 14, 21, 28]
    assert s.refresh_interval() == 7 and s.steps_since_refresh(30) == 2


@pytest.mark.parametrize("ppe, S, want", [
    (1, 10, [0, 10, 20]),
    (3, 10, [0, 3, 6, 10, 13, 16, 20, 23, 26]),
    (4, 8, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]),
    (5, 3, list(range(9))),  # more refreshes than steps: every step
])
def test_refreshes_per_epoch_evenly_spaced(ppe, S, want):
    _, W, _ = data()
    s = MipsSampler(L, R, 5, refreshes_per_epoch=ppe)
    s.set_steps_per_epoch(S)
    assert run_schedule(s, 3 * S, S, W) == want


def test_refresh_interval_lengths_and_warm_flag():
    _, W, _ = data()
    s = MipsSampler(L, R, 5, refreshes_per_epoch=3)
    s.set_steps_per_epoch(10)
    info = s.refresh(W, 0, 0)
    assert info["warm"] is False and info["clusters"] == K and info["nprobe"] == 16
    assert info["seconds"] > 0 and s.refresh_interval() == 3
    info = s.refresh(W, 6, 0)
    assert info["warm"] is True and s.refresh_interval() == 4  # steps 6..9, next at 10
    assert MipsSampler(L, R, 5, refreshes_per_epoch=2).refresh_interval() is None  # epoch length unknown


def test_refresh_per_epoch_needs_epoch_length():
    _, W, _ = data()
    s = MipsSampler(L, R, 5)
    s.refresh(W, 0, 0)
    with pytest.raises(RuntimeError, match="set_steps_per_epoch"):
        s.refresh_due(1, 0)


def test_warmup_switches_to_mips_with_a_refresh():
    emb, W, _ = data()
    pos = random_positives(7)
    inner = MipsSampler(L, R, 5, refreshes_per_epoch=1)
    s = WarmupSampler(inner, warmup_epochs=2)
    S = 4
    s.set_steps_per_epoch(S)
    assert isinstance(s.warmup, UniformSampler) and s.name == "mips-s" and s.needs_model
    refreshed, sources = [], []
    for step in range(4 * S):
        epoch = step // S
        if s.refresh_due(step, epoch):
            s.refresh(W, step, epoch)
            refreshed.append(step)
        neg = s.sample(emb, pos, epoch=epoch, generator=gen(step))
        sources.append(int((neg.source == SOURCE_MIPS).sum(1).max()))
    assert refreshed == [2 * S, 3 * S]  # at the switch, then once per epoch
    assert sources == [0] * (2 * S) + [5] * (2 * S)
    assert s.refresh_interval() == S and s.steps_since_refresh(3 * S + 1) == 1
    assert s.last_refresh_step == 3 * S


def test_state_dict_round_trip_gives_identical_samples():
    emb, W, b = data(8)
    pos = random_positives(9)
    a = MipsSampler(L, R, 6, clusters=K, nprobe=3, seed=4)
    a.set_steps_per_epoch(10)
    a.refresh(W, 0, 0, bias=b)
    a.refresh(W + 0.01, 3, 0, bias=b)  # a warm one: the centroids are not a cold build's
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    c = MipsSampler(L, R, 6, clusters=K, nprobe=3, seed=4)
    c.set_steps_per_epoch(10)
    c.load_state_dict(torch.load(buf, weights_only=False))
    assert c.last_refresh_step == 3 and c.refreshes == 2 and not c.refresh_due(4, 0)
    x, y = a.sample(emb, pos, generator=gen(1)), c.sample(emb, pos, generator=gen(1))
    assert torch.equal(x.ids, y.ids) and torch.equal(x.mask, y.mask) and torch.equal(x.source, y.source)


def test_warmup_state_dict_forwards():
    _, W, _ = data()
    s = WarmupSampler(MipsSampler(L, R, 5, refresh_every=3), 1)
    s.set_steps_per_epoch(5)
    s.refresh(W, 5, 1)
    state = s.state_dict()
    t = WarmupSampler(MipsSampler(L, R, 5, refresh_every=3), 1)
    t.load_state_dict(state)
    assert t.last_refresh_step == 5 and t.inner.index.is_built
    assert torch.equal(t.inner.index.centroids, s.inner.index.centroids)


def test_sampler_validation_messages():
    with pytest.raises(ValueError, match=r"k=21 is out of range: allowed \[1, 20\]"):
        MipsSampler(L, R, 21)
    with pytest.raises(ValueError, match=r"nprobe=18 is out of range: allowed \[1, 17\]"):
        MipsSampler(L, R, 5, nprobe=18)
    with pytest.raises(ValueError, match=r"clusters=0 is out of range: allowed \[1, 300\]"):
        MipsSampler(L, R, 5, clusters=0)
    with pytest.raises(ValueError, match=r"num_negatives=300 is out of range: allowed \[1, 299\]"):
        MipsSampler(L, 300, 5)
    with pytest.raises(ValueError, match="W has 10 rows"):
        MipsSampler(L, R, 5).refresh(torch.zeros(10, D), 0, 0)


@pytest.mark.parametrize("k, R, L, width", [(5, 100, 500, 3), (5, 20, 40, 8), (10, 10, 300, 2),
                                            (3, 30, 64, 20), (4, 12, 6, 6)])
def test_cpu_numpy_assembly_equals_the_torch_path(k, R, L, width):
    """The numpy fast path gives the same negatives from the same generator state."""
    from xmcviz.core.fast import reference
    from xmcviz.samplers.mips import _assemble_fast, assemble_negatives
    from xmcviz.samplers.ops import sorted_positive_table
    rng = np.random.default_rng(k * 1000 + R + width)
    B = 64
    ids = torch.as_tensor(rng.integers(0, L, size=(B, width)))
    mask = torch.as_tensor(rng.random((B, width)) < 0.7)
    mask[0] = False                       # a row without positives
    ids[1, :] = ids[1, 0]                 # a row with one positive repeated
    mask[1, :] = True
    if L <= width:
        ids[2] = torch.arange(width) % L  # a row whose every label is positive
        mask[2] = True
    pos = Positives(ids, mask)
    cand = torch.as_tensor(np.stack([rng.permutation(L)[:min(L, k + width)] for _ in range(B)]))
    cand[3, -2:] = -1                     # unfilled search results
    table, _ = sorted_positive_table(pos)
    with reference():
        ref = assemble_negatives(cand, pos, k, R, L, torch.Generator().manual_seed(7))
    # the numpy path, directly and through the public entry point (which takes it on the
    # CPU), computing the table itself or given it (as MipsSampler.sample does)
    for fast in (_assemble_fast(cand, table, k, R, L, torch.Generator().manual_seed(7)),
                 assemble_negatives(cand, pos, k, R, L, torch.Generator().manual_seed(7)),
                 assemble_negatives(cand, pos, k, R, L, torch.Generator().manual_seed(7),
                                    table=table)):
        assert torch.equal(fast.ids, ref.ids)
        assert torch.equal(fast.mask, ref.mask)
        assert torch.equal(fast.source, ref.source)
    # and the contract: no positive is ever in the loss
    is_pos = ((fast.ids[:, :, None] == ids[:, None, :]) & mask[:, None, :]).any(2)
    assert not bool((is_pos & fast.mask).any())
