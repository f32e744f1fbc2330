"""Exact chunked top-k and true ranks (xmcviz.core.topk) against brute force over all labels."""
import pytest
import torch

from xmcviz.core.topk import BLOCK_ELEMENTS, label_chunk_for, topk_labels, true_ranks

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]


def problem(B=6, L=37, d=5, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, d, generator=g, dtype=torch.float64)
    W = torch.randn(L, d, generator=g, dtype=torch.float64)
    bias = torch.randn(L, generator=g, dtype=torch.float64)
    return emb.to(device), W.to(device), bias.to(device)


def brute_topk(S: torch.Tensor, k: int):
    """Top k of every row of a full score matrix: score descending, then id ascending."""
    ids = torch.stack([torch.tensor(sorted(range(S.shape[1]), key=lambda j: (-float(row[j]), j)))
                       for row in S.cpu()])[:, :k]
    return S.cpu().gather(1, ids), ids


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [1, 4, 10, 37, 65536])
@pytest.mark.parametrize("k", [1, 5, 37])
def test_topk_matches_brute_force_for_any_chunking(device, chunk, k):
    emb, W, bias = problem(device=device)
    scores, ids = topk_labels(emb, W, k, bias=bias, label_chunk=chunk)
    ref_s, ref_i = brute_topk(emb @ W.T + bias, k)
    assert ids.shape == scores.shape == (6, k) and ids.dtype == torch.int64
    assert ids.device.type == device
    assert torch.equal(ids.cpu(), ref_i)
    torch.testing.assert_close(scores.cpu(), ref_s)


def test_without_bias_the_scores_are_inner_products():
    emb, W, _ = problem(L=20)
    scores, ids = topk_labels(emb, W, 4, label_chunk=3)
    assert torch.equal(ids, brute_topk(emb @ W.T, 4)[1])
    torch.testing.assert_close(scores, (emb[:, None, :] * W[ids]).sum(-1))


@pytest.mark.parametrize("chunk", [2, 8, 100])
def test_excluded_labels_never_appear_and_masked_entries_are_not_excluded(chunk):
    emb, W, bias = problem(B=4, L=30)
    S = emb @ W.T + bias
    best = brute_topk(S, 3)[1]
    # Exclude each row's two best labels; the third column is padding (mask False) naming the
    # row's third best label, which must stay eligible.
    exclude = best.clone()
    mask = torch.tensor([[True, True, False]] * 4)
    scores, ids = topk_labels(emb, W, 5, bias=bias, exclude=exclude, exclude_mask=mask,
                              label_chunk=chunk)
    S_ref = S.clone()
    S_ref.scatter_(1, best[:, :2], float("-inf"))
    ref_s, ref_i = brute_topk(S_ref, 5)
    assert torch.equal(ids, ref_i)
    torch.testing.assert_close(scores, ref_s)
    assert not (ids[:, :, None] == best[:, None, :2]).any()
    assert torch.equal(ids[:, 0], best[:, 2])


def test_exclude_without_mask_excludes_every_entry():
    emb, W, bias = problem(B=3, L=12)
    exclude = torch.arange(6).expand(3, 6)
    _, ids = topk_labels(emb, W, 6, bias=bias, exclude=exclude, label_chunk=5)
    assert sorted(ids[0].tolist()) == list(range(6, 12))


def test_ties_are_ordered_by_label_id_across_chunks():
    # Labels 1, 4, 7 and 9 have identical rows, larger than any other in every coordinate, and
    # the embeddings are positive: they are the top of every row with equal scores.
    emb, W, _ = problem(B=2, L=12, d=3)
    emb = emb.abs() + 0.1
    W[[1, 4, 7, 9]] = W.abs().max() + 1.0
    for chunk in (1, 3, 5, 12):
        scores, ids = topk_labels(emb, W, 4, label_chunk=chunk)
        assert ids.tolist() == [[1, 4, 7, 9]] * 2
        assert torch.equal(scores[:, :1].expand(2, 4), scores)


def test_all_tied_model_returns_distinct_labels():
    emb, W = torch.randn(3, 4), torch.zeros(10, 4)
    scores, ids = topk_labels(emb, W, 4, label_chunk=3)
    assert torch.all(scores == 0)
    assert all(len(set(r)) == 4 for r in ids.tolist()) and int(ids.max()) < 10
    assert ids.tolist() == [sorted(r) for r in ids.tolist()]  # tied: by id
    _, every = topk_labels(emb, W, 10, label_chunk=3)
    assert every.tolist() == [list(range(10))] * 3


@pytest.mark.parametrize("k", [0, 38])
def test_k_out_of_range_names_the_value(k):
    emb, W, _ = problem()
    with pytest.raises(ValueError, match=rf"k={k} is out of range: allowed \[1, 37\]"):
        topk_labels(emb, W, k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("chunk", [1, 7, 37, 65536])
def test_true_ranks_count_strictly_higher_scores(device, chunk):
    emb, W, bias = problem(device=device)
    S = (emb @ W.T + bias).cpu()
    ids = torch.randint(0, 37, (6, 9), generator=torch.Generator().manual_seed(1))
    ranks = true_ranks(emb, W, ids.to(device), bias=bias, label_chunk=chunk)
    ref = 1 + (S[:, None, :] > S.gather(1, ids)[:, :, None]).sum(-1)
    assert ranks.device.type == device and ranks.dtype == torch.int64
    assert torch.equal(ranks.cpu(), ref)


def test_true_ranks_of_the_top_k_are_one_to_k():
    emb, W, bias = problem(L=50)
    _, ids = topk_labels(emb, W, 8, bias=bias, label_chunk=16)
    ranks = true_ranks(emb, W, ids, bias=bias, label_chunk=16)
    assert ranks.tolist() == [list(range(1, 9))] * 6


def test_tied_labels_share_the_best_rank():
    emb, W, _ = problem(B=2, L=10, d=3)
    W[[3, 6]] = W.abs().max() + 1.0  # two labels tied above every other when emb > 0
    emb = emb.abs() + 0.1
    ranks = true_ranks(emb, W, torch.tensor([[3, 6], [6, 3]]), label_chunk=4)
    assert ranks.tolist() == [[1, 1], [1, 1]]
    W[3] = 0.0
    assert true_ranks(emb, W, torch.tensor([[6]]).expand(2, 1), label_chunk=4).tolist() == [[1], [1]]


def test_label_chunk_for_bounds_the_block():
    assert label_chunk_for(1) == BLOCK_ELEMENTS
    assert label_chunk_for(256) == BLOCK_ELEMENTS // 256
    assert label_chunk_for(10 ** 9) == 1024  # never thinner than 1024 labels
    assert label_chunk_for(10, max_elements=100_000) == 10_000
    with pytest.raises(ValueError, match="rows=0 is out of range"):
        label_chunk_for(0)
    with pytest.raises(ValueError, match="max_elements=0 is out of range"):
        label_chunk_for(4, max_elements=0)
