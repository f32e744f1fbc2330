"""Contracts of the samplers and the registry (MIPS details: test_samplers_mips.py)."""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from xmcviz.samplers import (SAMPLER_NAMES, SOURCE_ALL, SOURCE_EXACT, SOURCE_FREQUENCY, SOURCE_UNIFORM,
                             FrequencySampler, FullSampler, MipsAllSampler, MipsSampler, Positives,
                             TopSampler, TopUniformSampler, UniformSampler, WarmupSampler,
                             make_sampler)

L, R, B, D = 300, 24, 32, 16


def random_positives(B: int, L: int, seed: int, max_pos: int = 6, many: int = 150) -> Positives:
    """Rows with 0..max_pos distinct positives; row 0 has none, row 1 has ``many``."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_pos + 1, (B,), generator=g)
    counts[0], counts[1] = 0, many
    P = int(counts.max())
    ids = torch.stack([torch.randperm(L, generator=g)[:P] for _ in range(B)])
    mask = torch.arange(P)[None] < counts[:, None]
    return Positives(torch.where(mask, ids, 0), mask)


def model(seed: int = 0, bias: bool = False):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(L, D, generator=g)
    emb = torch.randn(B, D, generator=g)
    b = torch.randn(L, generator=g) if bias else None
    return emb, W, b


def positive_sets(pos: Positives) -> list[set]:
    return [set(pos.ids[i][pos.mask[i]].tolist()) for i in range(pos.ids.shape[0])]


def freq_counts() -> np.ndarray:
    # Zipf-like, head clipped so R draws are not mostly repeats of a few labels.
    f = np.minimum(np.random.default_rng(0).zipf(1.5, L), 100).astype(np.float64)
    f[:10] = 0  # unseen labels
    return f


def build(name: str):
    s = make_sampler(name, num_labels=L, num_negatives=R, label_freq=freq_counts(), mips_k=5,
                     clusters=17, nprobe=4)
    s.set_steps_per_epoch(10)
    return s


def draw(s, emb, pos, W, b, seed):
    if s.refresh_due(0, 0):
        s.refresh(W, 0, 0, bias=b)
    return s.sample(emb, pos, epoch=0, generator=torch.Generator().manual_seed(seed), W=W, bias=b)


# adversarial and meta need the training data: their contracts are in test_adversarial.py and
# test_samplers_meta.py.
@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if n not in ("adversarial", "meta")])
def test_sampler_contract(name):
    emb, W, b = model()
    pos = random_positives(B, L, 1)
    s = build(name)
    neg = draw(s, emb, pos, W, b, 7)
    width = L if name == "full" else R
    assert neg.ids.shape == neg.mask.shape == neg.source.shape == (B, width)
    assert neg.ids.dtype == torch.int64 and neg.mask.dtype == torch.bool and neg.source.dtype == torch.uint8
    assert ((neg.ids >= 0) & (neg.ids < L)).all()
    for i, p in enumerate(positive_sets(pos)):
        kept = neg.ids[i][neg.mask[i]].tolist()
        assert not (set(kept) & p), f"row {i}: a positive with mask True"
        assert len(kept) == len(set(kept)), f"row {i}: a duplicate with mask True"
    # Most slots are usable (row 1's 150 positives leave plenty of negatives).
    assert neg.mask.float().mean() > 0.8
    again = draw(build(name), emb, pos, W, b, 7)
    assert torch.equal(neg.ids, again.ids) and torch.equal(neg.mask, again.mask)
    assert torch.equal(neg.source, again.source)


@pytest.mark.parametrize("name", ["uniform", "frequency", "mips-s", "top-uniform"])
def test_random_samplers_follow_the_generator(name):
    emb, W, b = model()
    pos = random_positives(B, L, 1)
    s = build(name)
    a, c = draw(s, emb, pos, W, b, 7), draw(s, emb, pos, W, b, 8)
    assert not torch.equal(a.ids, c.ids)


def test_uniform_is_flat_over_negatives_and_masks_repeats():
    pos = Positives(torch.tensor([[0, 5, 17, 299]] * 200), torch.ones(200, 4, dtype=torch.bool))
    s = UniformSampler(L, R)
    emb = torch.zeros(200, D)
    counts = np.zeros(L)
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        neg = s.sample(emb, pos, generator=g)
        assert (neg.source == SOURCE_UNIFORM).all()
        # Count every draw (masked repeats included): the proposal itself must be flat.
        counts += np.bincount(neg.ids.ravel().numpy(), minlength=L)
    assert counts[[0, 5, 17, 299]].sum() == 0
    neg_labels = np.setdiff1d(np.arange(L), [0, 5, 17, 299])
    assert chisquare(counts[neg_labels]).pvalue > 1e-3
    # With replacement: some repeats happen (about R^2 / 2L per row), and are masked.
    assert (~neg.mask).sum() > 0


@pytest.mark.parametrize("alpha", [1.0, 0.75])
def test_frequency_matches_powered_counts(alpha):
    f = freq_counts()
    s = FrequencySampler(L, R, f, alpha=alpha)
    pos = Positives(torch.zeros(4000, 1, dtype=torch.int64), torch.zeros(4000, 1, dtype=torch.bool))
    neg = s.sample(torch.zeros(4000, D), pos, generator=torch.Generator().manual_seed(0))
    assert (neg.source == SOURCE_FREQUENCY).all()
    counts = np.bincount(neg.ids.ravel().numpy(), minlength=L)
    assert counts[:10].sum() == 0, "zero-frequency labels must never be drawn"
    p = np.where(f > 0, f ** alpha, 0)
    p /= p.sum()
    # Chi-square over the labels expected >= 5 times, the rest pooled.
    n = counts.sum()
    big = p * n >= 5
    small = ~big & (p > 0)
    obs, exp = counts[big], p[big] * n
    if small.any():
        obs, exp = np.append(obs, counts[small].sum()), np.append(exp, p[small].sum() * n)
    assert big.sum() > 100
    assert chisquare(obs, exp).pvalue > 1e-3


def test_frequency_rejects_positives_and_masks_leftovers():
    f = np.ones(L)
    f[:3] = 1e6  # labels 0..2 hold almost all the mass
    s = FrequencySampler(L, R, f, max_rounds=2)
    pos = Positives(torch.tensor([[0, 1, 2], [0, 0, 0]]), torch.tensor([[True] * 3, [False] * 3]))
    neg = s.sample(torch.zeros(2, D), pos, generator=torch.Generator().manual_seed(0))
    assert not (neg.mask[0] & (neg.ids[0] < 3)).any()
    assert s.last_rejected > 0 and not neg.mask[0].all()  # leftovers after 2 rounds are masked
    assert (neg.ids[1][neg.mask[1]] < 3).all()  # row without positives: the heavy labels


def test_frequency_redraws_rejected_positives():
    f = np.ones(L)
    f[0] = (L - 1) / 3  # label 0 holds a quarter of the mass, and is positive everywhere
    s = FrequencySampler(L, R, f)
    pos = Positives(torch.zeros(8, 1, dtype=torch.int64), torch.ones(8, 1, dtype=torch.bool))
    neg = s.sample(torch.zeros(8, D), pos, generator=torch.Generator().manual_seed(0))
    # Without redraws about R/4 slots per row would be lost; with 8 rounds none is.
    assert s.last_rejected == 0 and (neg.ids != 0).all()


def test_frequency_validation():
    with pytest.raises(ValueError, match="only 5 labels have non-zero frequency.*smoothing"):
        FrequencySampler(L, R, np.r_[np.ones(5), np.zeros(L - 5)])
    s = FrequencySampler(L, R, np.r_[np.ones(5), np.zeros(L - 5)], smoothing=0.5)
    assert (s.probs > 0).all()
    with pytest.raises(ValueError, match="label_freq has 3 entries"):
        FrequencySampler(L, R, [1, 2, 3])
    with pytest.raises(ValueError, match="non-negative"):
        FrequencySampler(L, R, -np.ones(L))
    with pytest.raises(ValueError, match=r"alpha=-1 is out of range"):
        FrequencySampler(L, R, np.ones(L), alpha=-1)


def brute_force_top(emb, W, b, pos, k):
    s = emb @ W.T + (0 if b is None else b)
    out = []
    for i, p in enumerate(positive_sets(pos)):
        order = [j for j in torch.argsort(s[i], descending=True, stable=True).tolist() if j not in p]
        out.append(order[:k])
    return out


@pytest.mark.parametrize("with_bias", [False, True])
def test_top_equals_brute_force(with_bias):
    emb, W, b = model(3, bias=with_bias)
    pos = random_positives(B, L, 2)
    neg = TopSampler(L, R).sample(emb, pos, W=W, bias=b)
    assert neg.mask.all() and (neg.source == SOURCE_EXACT).all()
    assert neg.ids.tolist() == brute_force_top(emb, W, b, pos, R)


def test_top_masks_when_a_row_has_fewer_negatives_than_R():
    emb, W, _ = model()
    pos = Positives(torch.arange(L - 5)[None], torch.ones(1, L - 5, dtype=torch.bool))
    neg = TopSampler(L, 8).sample(emb[:1], pos, W=W)
    assert neg.mask.sum() == 5 and sorted(neg.ids[0][neg.mask[0]].tolist()) == list(range(L - 5, L))


def test_top_needs_W():
    with pytest.raises(ValueError, match="pass W="):
        TopSampler(L, R).sample(torch.zeros(2, D), random_positives(2, L, 0, many=3))


def test_top_uniform_has_k_exact_then_uniform():
    emb, W, _ = model(4)
    pos = random_positives(B, L, 5)
    k = 6
    neg = TopUniformSampler(L, R, k).sample(emb, pos, W=W, generator=torch.Generator().manual_seed(0))
    assert (neg.source[:, :k] == SOURCE_EXACT).all() and (neg.source[:, k:] == SOURCE_UNIFORM).all()
    assert neg.ids[:, :k].tolist() == brute_force_top(emb, W, None, pos, k)
    assert neg.mask[:, :k].all()  # the exact ones are never the ones dropped
    # A uniform draw equal to an exact negative is masked.
    for i in range(B):
        hard = set(neg.ids[i, :k].tolist())
        for j in range(k, R):
            if int(neg.ids[i, j]) in hard:
                assert not neg.mask[i, j]


def test_full_masks_exactly_the_positives():
    pos = random_positives(B, L, 6)
    neg = FullSampler(L).sample(torch.zeros(B, D), pos)
    assert (neg.ids == torch.arange(L)).all() and (neg.source == SOURCE_ALL).all()
    for i, p in enumerate(positive_sets(pos)):
        assert set(torch.nonzero(~neg.mask[i]).ravel().tolist()) == p


def test_full_refuses_huge_batches():
    with pytest.raises(ValueError, match=r"B\*L = 4\*300 = 1200 .*max_elements=1000"):
        FullSampler(L, max_elements=1000).sample(torch.zeros(4, D), random_positives(4, L, 0, many=2))


def test_registry_names_and_types():
    assert SAMPLER_NAMES == ("full", "uniform", "frequency", "top", "top-uniform", "mips-a", "mips-s",
                             "adversarial", "meta")  # adversarial: test_trainer_adversarial.py
    kinds = {"full": FullSampler, "uniform": UniformSampler, "frequency": FrequencySampler,
             "top": TopSampler, "top-uniform": TopUniformSampler, "mips-a": MipsAllSampler,
             "mips-s": MipsSampler}
    for name in kinds:
        s = build(name)
        assert type(s) is kinds[name] and s.name == name
    assert build("mips-a").k == R and build("mips-s").k == 5 and build("top-uniform").k == 5
    w = make_sampler("mips-s", num_labels=L, num_negatives=R, warmup_epochs=2)
    assert isinstance(w, WarmupSampler) and w.warmup_epochs == 2 and isinstance(w.inner, MipsSampler)
    mips = make_sampler("mips-a", num_labels=L, num_negatives=R)
    assert mips.clusters == 17 and mips.nprobe == 16 and mips.refreshes_per_epoch == 1  # sqrt(300) ~ 17


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="mips"), "unknown sampler 'mips': allowed full, uniform, frequency, top, top-uniform, mips-a, mips-s"),
    (dict(name="mips-s", mips_k=25), r"k=25 is out of range: allowed \[1, 24\]"),
    (dict(name="top-uniform", mips_k=0), r"k=0 is out of range: allowed \[1, 24\]"),
    (dict(name="mips-s", nprobe=18), r"nprobe=18 is out of range: allowed \[1, 17\]"),
    (dict(name="mips-s", clusters=301), r"clusters=301 is out of range: allowed \[1, 300\]"),
    (dict(name="uniform", num_negatives=300), r"num_negatives=300 is out of range: allowed \[1, 299\]"),
    (dict(name="mips-a", refresh_every=5, refreshes_per_epoch=2), "only one of refresh_every=5 and refreshes_per_epoch=2"),
    (dict(name="mips-a", refreshes_per_epoch=0), r"refreshes_per_epoch=0 is out of range: allowed >= 1"),
    (dict(name="mips-a", refresh_every=0), r"refresh_every=0 is out of range: allowed >= 1"),
    (dict(name="frequency"), "needs label_freq"),
    (dict(name="uniform", warmup_epochs=-1), r"warmup_epochs=-1 is out of range"),
])
def test_make_sampler_validation(kwargs, message):
    args = dict(num_labels=L, num_negatives=R)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        make_sampler(args.pop("name"), **args)
