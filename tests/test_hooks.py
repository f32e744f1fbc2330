"""Each instrument against a brute-force computation on a tiny problem."""
import numpy as np
import pytest
import torch

from xmcviz.hooks.base import RunInfo, StepContext
from xmcviz.hooks.frequency import LabelFrequency
from xmcviz.hooks.gradient import GradientDominance, gradient_terms
from xmcviz.hooks.ranks import NegativeRanks
from xmcviz.hooks.storage import read_jsonl, read_records
from xmcviz.samplers.base import SOURCE_MIPS, SOURCE_UNIFORM, Negatives, Positives, NegativeSampler

L, D, B, R = 40, 6, 8, 5


class Toy(torch.nn.Module):
    def __init__(self, bias=True, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(L, D, generator=g))
        self.bias = torch.nn.Parameter(torch.randn(L, generator=g)) if bias else None


def make_ctx(step=0, seed=0, model=None, bias=True, eta_ratio=1.0, ssr=None, interval=None):
    g = torch.Generator().manual_seed(seed + 100)
    model = model or Toy(bias)
    emb = torch.randn(B, D, generator=g)
    pos_ids = torch.argsort(torch.rand(B, L, generator=g), dim=1)[:, :3]  # distinct per row
    pos_mask = torch.rand(B, 3, generator=g) > 0.3
    pos_mask[:, 0] = True
    neg_ids = torch.randint(0, L, (B, R), generator=g)
    neg_mask = torch.rand(B, R, generator=g) > 0.2
    source = torch.where(torch.rand(B, R, generator=g) > 0.5, SOURCE_MIPS, SOURCE_UNIFORM).to(torch.uint8)
    W, b = model.W.detach(), (model.bias.detach() if model.bias is not None else 0)
    score = lambda ids: (emb.unsqueeze(1) @ W[ids].transpose(1, 2)).squeeze(1) + (b[ids] if bias else 0)
    return StepContext(step=step, epoch=0, step_in_epoch=step, rows=torch.arange(B) + 10 * step, emb=emb,
                       positives=Positives(pos_ids, pos_mask),
                       negatives=Negatives(neg_ids, neg_mask, source),
                       pos_scores=score(pos_ids), neg_scores=score(neg_ids), loss=0.0, model=model,
                       sampler=NegativeSampler(L, R), eta_ratio=eta_ratio,
                       steps_since_refresh=ssr, refresh_interval=interval)


def run_info(tmp_path, resume_step=None):
    info = RunInfo(run_dir=tmp_path, config={}, num_labels=L, num_features=D, steps_per_epoch=10,
                   device=torch.device("cpu"))
    info.resume_step = resume_step
    return info


def test_ranks_equal_positions_in_full_sort(tmp_path):
    hook = NegativeRanks(every=1, probe=5)
    hook.on_train_start(run_info(tmp_path))
    seen = []
    hook.subscribe(seen.append)
    ctx = make_ctx(ssr=3, interval=7)
    hook.before_update(ctx)
    hook.close()
    rec = read_records(tmp_path / "hooks" / "ranks.bin")
    full = ctx.emb[:5] @ ctx.model.W.detach().T + ctx.model.bias.detach()
    expected = []
    for r in range(5):
        for c in range(R):
            if ctx.negatives.mask[r, c]:
                s = full[r, ctx.negatives.ids[r, c]]
                expected.append((int(ctx.rows[r]), int(ctx.negatives.ids[r, c]),
                                 int(ctx.negatives.source[r, c]), 1 + int((full[r] > s).sum())))
    got = [(int(x["row"]), int(x["label"]), int(x["source"]), int(x["rank"])) for x in rec]
    assert got == expected
    assert set(rec["steps_since_refresh"]) == {3} and set(rec["refresh_interval"]) == {7}
    assert len(seen) == 1 and seen[0]["count"] == len(expected)
    assert seen[0]["median_rank"] == pytest.approx(np.median([e[3] for e in expected]))


def test_gradient_terms_equal_autograd_split():
    ctx = make_ctx(eta_ratio=3.0)
    emb = ctx.emb.clone().requires_grad_(True)
    W, b = ctx.model.W.detach(), ctx.model.bias.detach()
    sp = lambda ids: (emb.unsqueeze(1) @ W[ids].transpose(1, 2)).squeeze(1) + b[ids]
    pos, neg = ctx.positives, ctx.negatives
    loss_pos = 3.0 * (torch.nn.functional.softplus(-sp(pos.ids)) * pos.mask).sum()
    loss_neg = (torch.nn.functional.softplus(sp(neg.ids)) * neg.mask).sum()
    g_pos, = torch.autograd.grad(loss_pos, emb)
    g_neg, = torch.autograd.grad(loss_neg, emb)
    # Full loss: all non-positive labels as negatives.
    full = emb @ W.T + b
    is_pos = torch.zeros(B, L, dtype=torch.bool)
    is_pos[torch.arange(B).unsqueeze(1).expand_as(pos.ids)[pos.mask], pos.ids[pos.mask]] = True
    g_full, = torch.autograd.grad((torch.nn.functional.softplus(full) * ~is_pos).sum(), emb)
    terms = gradient_terms(ctx.emb, ctx.model.W, ctx.model.bias, pos.ids, pos.mask, ctx.pos_scores,
                           neg.ids, neg.mask, ctx.neg_scores, 3.0, label_chunk=7)
    torch.testing.assert_close(terms["g_pos"], g_pos, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["g_neg"], g_neg, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["g_neg_full"], g_full, rtol=1e-5, atol=1e-5)


def test_gradient_hook_records(tmp_path):
    hook = GradientDominance(every=1, probe=4)
    hook.on_train_start(run_info(tmp_path))
    ctx = make_ctx(bias=False)
    hook.before_update(ctx)
    hook.close()
    rec = read_records(tmp_path / "hooks" / "grad.bin")
    assert len(rec) == 4
    t = gradient_terms(ctx.emb[:4], ctx.model.W, None, ctx.positives.ids[:4], ctx.positives.mask[:4],
                       ctx.pos_scores[:4], ctx.negatives.ids[:4], ctx.negatives.mask[:4], ctx.neg_scores[:4])
    np.testing.assert_allclose(rec["norm_neg"], t["g_neg"].norm(dim=1).numpy(), rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(t["g_pos"] + t["g_neg"], t["g_pos"] + t["g_neg_full"])
    np.testing.assert_allclose(rec["cos_sampled_full"], cos.numpy(), rtol=1e-5, atol=1e-6)
    summary = read_jsonl(tmp_path / "hooks" / "grad.jsonl")[0]
    assert summary["ratio"] == pytest.approx(float(np.median(rec["norm_neg"] / rec["norm_pos"])), rel=1e-5)


def test_gradient_score_means_and_dead_rows_equal_brute_force(tmp_path):
    ctx = make_ctx(seed=3)
    ctx.emb[1] = 0.0  # a dead row: every ReLU unit off
    ctx.pos_scores[1] = ctx.model.bias.detach()[ctx.positives.ids[1]]
    ctx.neg_scores[1] = ctx.model.bias.detach()[ctx.negatives.ids[1]]
    hook = GradientDominance(every=1, probe=5, label_chunk=7)
    hook.on_train_start(run_info(tmp_path))
    hook.before_update(ctx)
    hook.close()
    rec = read_records(tmp_path / "hooks" / "grad.bin")
    full = torch.sigmoid(ctx.emb @ ctx.model.W.detach().T + ctx.model.bias.detach())
    for r in range(5):
        pos = ctx.positives.ids[r][ctx.positives.mask[r]]
        neg = ctx.negatives.ids[r][ctx.negatives.mask[r]]
        assert rec["sig_pos"][r] == pytest.approx(float(full[r, pos].mean()), rel=1e-5)
        assert rec["sig_neg"][r] == pytest.approx(float(full[r, neg].mean()), rel=1e-5)
        assert rec["sig_all"][r] == pytest.approx(float(full[r].mean()), rel=1e-5)
        assert rec["emb_norm"][r] == pytest.approx(float(ctx.emb[r].norm()), rel=1e-5)
    summary = read_jsonl(tmp_path / "hooks" / "grad.jsonl")[0]
    assert summary["dead_fraction"] == pytest.approx(1 / 5)
    assert summary["sig_all"] == pytest.approx(float(np.median(rec["sig_all"])), rel=1e-6)


def test_gradient_score_means_of_rows_without_entries_are_nan():
    ctx = make_ctx()
    ctx.negatives.mask[2] = False
    pos, neg = ctx.positives, ctx.negatives
    t = gradient_terms(ctx.emb, ctx.model.W, ctx.model.bias, pos.ids, pos.mask, ctx.pos_scores,
                       neg.ids, neg.mask, ctx.neg_scores)
    assert torch.isnan(t["sig_neg"][2]) and torch.isfinite(t["sig_neg"][torch.arange(B) != 2]).all()


def drive_windows(hook, steps: int = 7, interval: int = 4) -> list:
    """Seven steps with a refresh every ``interval`` (windows of 3 steps in the tests), then close:
    the steps and refresh windows that the windowed hooks write; returns the contexts."""
    ctxs = [make_ctx(step=s, seed=s, ssr=s % interval, interval=interval) for s in range(steps)]
    for c in ctxs:
        if c.steps_since_refresh == 0 and c.step > 0:
            hook.on_refresh({"step": c.step})
        hook.before_update(c)
    hook.close()
    return ctxs


def test_frequencies_equal_recount(tmp_path):
    hook = LabelFrequency(every=1, window=3)
    hook.on_train_start(run_info(tmp_path))
    ctxs = drive_windows(hook)
    summaries = read_jsonl(tmp_path / "hooks" / "freq.jsonl")
    rec = read_records(tmp_path / "hooks" / "freq.bin")
    wins = {s["window"]: s for s in summaries if s["source"] == "all"}
    for wid, s in wins.items():
        steps = range(s["start_step"], s["end_step"])
        expect = np.zeros((6, L), dtype=np.int64)
        for c in ctxs:
            if c.step in steps:
                m = c.negatives.mask
                np.add.at(expect, (c.negatives.source[m].long().numpy(), c.negatives.ids[m].numpy()), 1)
        got = np.zeros((6, L), dtype=np.int64)
        sel = rec[rec["window"] == wid]
        got[sel["source"], sel["label"]] = sel["count"]
        np.testing.assert_array_equal(got, expect)
        assert s["draws"] == expect.sum()
        assert s["distinct"] == (expect.sum(0) > 0).sum()
        top = np.sort(expect.sum(0))[::-1][:10].sum()
        assert s["top10_share"] == pytest.approx(top / expect.sum())
    kinds = sorted((s["kind"], s["start_step"], s["end_step"]) for s in wins.values())
    assert kinds == [("refresh", 0, 4), ("refresh", 4, 7), ("steps", 0, 3), ("steps", 3, 6), ("steps", 6, 7)]


def test_frequency_records_bounded_by_keep(tmp_path):
    # keep=3 of L=40: the .bin holds each source's 3 most drawn labels; summaries see everything.
    hook = LabelFrequency(every=1, window=4, by_refresh=False, keep=3)
    hook.on_train_start(run_info(tmp_path))
    ctxs = [make_ctx(step=s, seed=s) for s in range(4)]
    for c in ctxs:
        hook.before_update(c)
    hook.close()
    rec = read_records(tmp_path / "hooks" / "freq.bin")
    summ = {s["source"]: s for s in read_jsonl(tmp_path / "hooks" / "freq.jsonl")}
    expect = np.zeros((6, L), dtype=np.int64)
    for c in ctxs:
        m = c.negatives.mask
        np.add.at(expect, (c.negatives.source[m].long().numpy(), c.negatives.ids[m].numpy()), 1)
    for code in (SOURCE_MIPS, SOURCE_UNIFORM):
        sel = rec[rec["source"] == code]
        assert len(sel) == 3
        np.testing.assert_array_equal(sel["count"], expect[code, sel["label"]])
        # The 3 kept are the most drawn: every label left out has at most the smallest kept count.
        left = np.setdiff1d(np.arange(L), sel["label"])
        assert expect[code, left].max() <= sel["count"].min()
        name = "mips" if code == SOURCE_MIPS else "uniform"
        assert summ[name]["draws"] == expect[code].sum()
        assert summ[name]["distinct"] == (expect[code] > 0).sum()
        assert summ[name]["kept_draws"] == sel["count"].sum()
        c = expect[code][expect[code] > 0]
        assert summ[name]["count_hist"] == np.bincount(np.floor(np.log2(c)).astype(int)).tolist()
    assert summ["all"]["draws"] == expect.sum() and summ["all"]["kept_draws"] == rec["count"].sum()
    assert sum(summ["all"]["count_hist"]) == summ["all"]["distinct"]


def test_frequency_keep_validated():
    with pytest.raises(ValueError, match="keep=0"):
        LabelFrequency(keep=0)


def test_resume_truncates_records_of_redone_steps(tmp_path):
    hook = NegativeRanks(every=1, probe=2)
    hook.on_train_start(run_info(tmp_path))
    for s in range(5):
        hook.before_update(make_ctx(step=s, seed=s))
    hook.close()
    hook = NegativeRanks(every=1, probe=2)
    hook.on_train_start(run_info(tmp_path, resume_step=3))
    hook.close()
    assert sorted(set(read_records(tmp_path / "hooks" / "ranks.bin")["step"])) == [0, 1, 2]
    assert [r["step"] for r in read_jsonl(tmp_path / "hooks" / "ranks.jsonl")] == [0, 1, 2]


def test_torn_tail_is_ignored(tmp_path):
    hook = NegativeRanks(every=1, probe=2)
    hook.on_train_start(run_info(tmp_path))
    hook.before_update(make_ctx())
    hook.close()
    n = len(read_records(tmp_path / "hooks" / "ranks.bin"))
    with open(tmp_path / "hooks" / "ranks.bin", "ab") as f:
        f.write(b"\x01\x02\x03")
    with open(tmp_path / "hooks" / "ranks.jsonl", "a") as f:
        f.write('{"step": 9, "coun')
    assert len(read_records(tmp_path / "hooks" / "ranks.bin")) == n
    assert len(read_jsonl(tmp_path / "hooks" / "ranks.jsonl")) == 1


def test_every_and_probe_are_validated():
    with pytest.raises(ValueError, match="every=0"):
        NegativeRanks(every=0)
    with pytest.raises(ValueError, match="probe=0"):
        GradientDominance(probe=0)
    with pytest.raises(ValueError, match="window=0"):
        LabelFrequency(window=0)


def test_staleness_recall_against_brute_force(tmp_path):
    from xmcviz.hooks.staleness import IndexStaleness, overlap
    from xmcviz.samplers.faiss_index import MipsIndex

    model = Toy(bias=False)
    index = MipsIndex(clusters=4, nprobe=4)  # exhaustive: approx == exact under the snapshot
    index.build(model.W.detach().clone())
    sampler = NegativeSampler(L, R)
    sampler.index = index
    ctx = make_ctx(model=model, bias=False, ssr=2, interval=5)
    ctx.sampler = sampler
    hook = IndexStaleness(every=1, probe=6, k=4)
    hook.on_train_start(run_info(tmp_path))
    hook.before_update(ctx)  # W == snapshot: everything agrees
    with torch.no_grad():
        model.W.add_(torch.randn(L, D, generator=torch.Generator().manual_seed(5)))
    hook.before_update(ctx)  # W moved: compare with brute force
    hook.close()
    recs = read_jsonl(tmp_path / "hooks" / "staleness.jsonl")
    assert recs[0]["recall"] == 1.0 and recs[0]["overlap_snapshot"] == 1.0 and recs[0]["ann_recall"] == 1.0
    now = torch.topk(ctx.emb[:6] @ model.W.detach().T, 4).indices
    snap = torch.topk(ctx.emb[:6] @ index.snapshot[0].T, 4).indices
    expect = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(now, snap)) / (6 * 4)
    assert recs[1]["overlap_snapshot"] == pytest.approx(expect)
    assert recs[1]["recall"] == pytest.approx(expect)  # exhaustive index == snapshot search
    assert recs[1]["steps_since_refresh"] == 2 and recs[1]["refresh_interval"] == 5
    assert overlap(torch.tensor([[1, 2, -1]]), torch.tensor([[2, -1, 3]])).tolist() == [1]


def test_staleness_copies_the_snapshot_once_per_refresh():
    # An index on another device than the model (faiss-cpu with a CUDA model): the snapshot is
    # copied to the model's device once per refresh, not at every logged step ("meta" stands in
    # for the GPU here: a copy with no data).
    from xmcviz.hooks.staleness import IndexStaleness
    from xmcviz.samplers.faiss_index import MipsIndex

    index = MipsIndex(clusters=4, nprobe=4)
    index.build(torch.randn(L, D))
    hook = IndexStaleness()
    meta = torch.device("meta")
    first = hook._snapshot_on(index, meta)
    assert first[0].device == meta and first[0].shape == (L, D)
    assert hook._snapshot_on(index, meta)[0] is first[0]
    index.refresh(torch.randn(L, D))
    assert hook._snapshot_on(index, meta)[0] is not first[0]
    assert hook._snapshot_on(index, torch.device("cpu"))[0].data_ptr() == index.snapshot[0].data_ptr()


def test_make_hooks_spec():
    from xmcviz.hooks import make_hooks

    hooks = make_hooks("ranks:5,freq,grad:20,staleness")
    assert [h.name for h in hooks] == ["ranks", "freq", "grad", "staleness"]
    assert [h.every for h in hooks] == [5, 1, 20, 10]
    assert make_hooks("none") == []
    assert [h.name for h in make_hooks("default")] == ["ranks", "freq", "grad", "staleness", "popularity",
                                                       "hidden"]
    with pytest.raises(ValueError, match="'bogus' is not known"):
        make_hooks("bogus")
    with pytest.raises(ValueError, match="'x' is not an integer"):
        make_hooks("ranks:x")


def test_full_scoring_hooks_thin_out_at_large_label_counts(tmp_path):
    from xmcviz.hooks.recording import FULL_SCORE_LABELS, interval_for
    from xmcviz.hooks.staleness import IndexStaleness

    assert interval_for(20, 4096) == 20 and interval_for(20, FULL_SCORE_LABELS) == 20
    assert interval_for(20, 670_091) == round(20 * 670_091 / FULL_SCORE_LABELS)
    for cls, base in ((NegativeRanks, 20), (IndexStaleness, 10), (GradientDominance, 20)):
        for L, expect in ((4096, base), (670_091, interval_for(base, 670_091))):
            hook = cls()
            hook.on_train_start(RunInfo(run_dir=None, config={}, num_labels=L, num_features=D,
                                        steps_per_epoch=10, device=torch.device("cpu")))
            assert hook.every == expect
        given = cls(every=3)  # an explicit interval is kept at any L
        given.on_train_start(RunInfo(run_dir=None, config={}, num_labels=670_091, num_features=D,
                                     steps_per_epoch=10, device=torch.device("cpu")))
        assert given.every == 3
