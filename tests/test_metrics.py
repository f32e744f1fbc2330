import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import xmcviz.core.evaluate as M
from xmcviz.core.evaluate import evaluate, inv_propensity, predict_topk

nxm = pytest.importorskip("napkinxc.metrics")


def random_Y(rng, N, L, density=0.08, empty_frac=0.2):
    """Random binary CSR (scipy csr_matrix, as napkinxc wants) with some rows without labels."""
    Y = (rng.random((N, L)) < density).astype(np.float32)
    Y[rng.random(N) < empty_frac] = 0
    Y[0] = 0                                      # at least one empty row
    Y[1, :3] = 1                                  # and one with several labels
    return sp.csr_matrix(Y)


def ref_ranking(S, k):
    """Top-k ids by score descending, ties to the lower id (stable argsort), as lists."""
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


def napkin_all(Y, ids, ips, kmax):
    """napkinxc's four at-k metrics, each an array over k = 1..kmax."""
    pred = [[int(i) for i in row if i >= 0] for row in ids]
    out = {
        "P": nxm.precision_at_k(Y, pred, k=kmax),
        "nDCG": nxm.ndcg_at_k(Y, pred, k=kmax),
    }
    if ips is not None:
        out["PSP"] = nxm.psprecision_at_k(Y, pred, ips, k=kmax)
        out["PSnDCG"] = nxm.psndcg_at_k(Y, pred, ips, k=kmax)
    return out


def assert_matches_napkin(res, ref, ks):
    for name, arr in ref.items():
        for k in ks:
            assert res[f"{name}@{k}"] == pytest.approx(arr[k - 1], abs=1e-6), (name, k)


# --- inverse propensities ------------------------------------------------------------------

@pytest.mark.parametrize("A,B", [(0.55, 1.5), (0.6, 2.6), (0.5, 0.4)])
def test_inv_propensity_matches_napkinxc(A, B):
    rng = np.random.default_rng(0)
    Y = random_Y(rng, 300, 40).toarray()
    Y[:, 7] = 0                                   # a label never seen in training
    Y = sp.csr_matrix(Y)
    ours = inv_propensity(Y, A=A, B=B)
    assert ours.shape == (40,) and ours.dtype == np.float64
    # napkinxc computes in the dtype of Y: float32 labels give float32 propensities.
    np.testing.assert_allclose(ours, nxm.Jain_et_al_inverse_propensity(Y, A=A, B=B), rtol=1e-6)
    ref = nxm.Jain_et_al_inverse_propensity(Y.astype(np.float64), A=A, B=B)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(inv_propensity(Y.toarray(), A=A, B=B), ref, atol=1e-9)
    np.testing.assert_allclose(inv_propensity(torch.from_numpy(Y.toarray()), A=A, B=B), ref,
                               atol=1e-9)


def test_inv_propensity_formula_by_hand():
    # N = 4 rows; label 0 in 3 rows, label 1 in 1 row, label 2 in none.
    Y = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32))
    C = (math.log(4) - 1) * 2.5 ** 0.55
    expected = [1 + C * 4.5 ** -0.55, 1 + C * 2.5 ** -0.55, 1 + C * 1.5 ** -0.55]
    np.testing.assert_allclose(inv_propensity(Y), expected, atol=1e-12)
    # Rarer labels get larger inverse propensities.
    assert inv_propensity(Y)[0] < inv_propensity(Y)[1] < inv_propensity(Y)[2]


def test_inv_propensity_counts_rows_not_values():
    Y = sp.csr_matrix(np.array([[2.0, 0], [1.0, 1.0], [0, 0]]))
    np.testing.assert_allclose(inv_propensity(Y), inv_propensity((Y != 0).astype(np.float32)))


def test_inv_propensity_rejects_empty():
    with pytest.raises(ValueError, match="N=0"):
        inv_propensity(sp.csr_matrix((0, 5)))


# --- cross-check with napkinxc -------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_matches_napkinxc_with_ties(seed):
    rng = np.random.default_rng(seed)
    N, L = 250, 60
    Y = random_Y(rng, N, L)
    ips = inv_propensity(Y)
    # Integer-valued scores (stored as float) create many ties; napkinxc gets the same ranking.
    S = rng.integers(0, 4, size=(N, L)).astype(np.float32)
    ks = (1, 2, 3, 4, 5)
    res = evaluate(S, Y, ks=ks, inv_propensity=ips)
    assert_matches_napkin(res, napkin_all(Y, ref_ranking(S, 5), ips, 5), ks)


def test_evaluate_sparse_scores_match_napkinxc():
    # napkinxc ranks only the stored entries of a CSR prediction matrix; so do we.  Some rows
    # store fewer than k entries (fewer predictions, still divided by k); no ties here.
    rng = np.random.default_rng(3)
    N, L = 200, 50
    Y = random_Y(rng, N, L)
    ips = inv_propensity(Y)
    S = rng.random((N, L)) * (rng.random((N, L)) < 0.1)
    S[5] = 0
    S = sp.csr_matrix(S)
    assert (np.diff(S.indptr) < 5).any()
    ref = {
        "P": nxm.precision_at_k(Y, S, k=5),
        "nDCG": nxm.ndcg_at_k(Y, S, k=5),
        "PSP": nxm.psprecision_at_k(Y, S, ips, k=5),
        "PSnDCG": nxm.psndcg_at_k(Y, S, ips, k=5),
    }
    assert_matches_napkin(evaluate(S, Y, ks=(1, 3, 5), inv_propensity=ips), ref, (1, 3, 5))


def test_fewer_labels_than_k_matches_napkinxc():
    rng = np.random.default_rng(4)
    Y = random_Y(rng, 50, 3, density=0.4)
    S = rng.random((50, 3))
    ips = inv_propensity(Y)
    res = evaluate(S, Y, ks=(1, 3, 5), inv_propensity=ips)
    assert_matches_napkin(res, napkin_all(Y, ref_ranking(S, 3), ips, 5), (1, 3, 5))


# --- hand-computed ---------------------------------------------------------------------------

def test_hand_computed_example():
    # Row 0 has labels {0, 2}, row 1 {1}, row 2 none.  L = 4.
    Y = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    ids = np.array([[2, 1, 0], [0, 3, 1], [0, 1, 2]])
    ips = np.array([1.0, 2.0, 3.0, 4.0])
    res = evaluate(ids, Y, ks=(1, 3), inv_propensity=ips)
    assert res["P@1"] == pytest.approx(1 / 3)
    assert res["P@3"] == pytest.approx((2 / 3 + 1 / 3) / 3)
    assert res["nDCG@1"] == pytest.approx(1 / 3)
    row0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    row1 = (1 / math.log2(4)) / 1.0
    assert res["nDCG@3"] == pytest.approx((row0 + row1) / 3)
    # PSP@1: hits 3 (row 0: label 2) + 0; best 3 (row 0) + 2 (row 1).
    assert res["PSP@1"] == pytest.approx(3 / 5)
    # PSP@3: hits 3 + 1 and 2; best 3 + 1 and 2.
    assert res["PSP@3"] == pytest.approx(1.0)
    # PSnDCG@1: row 0 3/1, row 1 0 over best 3/1 + 2/1.
    assert res["PSnDCG@1"] == pytest.approx(3 / 5)
    # PSnDCG@3: row 0 (3 + 1/log2 4) / idcg2 vs best (3 + 1/log2 3) / idcg2; row 1 (2/log2 4) vs 2.
    idcg2 = 1 + 1 / math.log2(3)
    num = (3 + 1 / math.log2(4)) / idcg2 + 2 / math.log2(4)
    den = (3 + 1 / math.log2(3)) / idcg2 + 2
    assert res["PSnDCG@3"] == pytest.approx(num / den)
    assert all(isinstance(v, float) for v in res.values())


def test_perfect_and_worst_predictions():
    rng = np.random.default_rng(5)
    Y = random_Y(rng, 100, 30, empty_frac=0.0)
    Y = Y[np.diff(Y.indptr) > 0]                 # every row has labels
    ips = inv_propensity(Y)
    perfect = evaluate(Y.toarray() * ips, Y, inv_propensity=ips)   # positives by inv. prop.
    for k in (1, 3, 5):
        assert perfect[f"nDCG@{k}"] == pytest.approx(1.0)
        assert perfect[f"PSP@{k}"] == pytest.approx(1.0)
        assert perfect[f"PSnDCG@{k}"] == pytest.approx(1.0)
    assert perfect["P@1"] == pytest.approx(1.0)
    worst = evaluate(-Y.toarray(), Y, inv_propensity=ips)
    assert all(v == 0.0 for v in worst.values())


# --- equivalence of input forms --------------------------------------------------------------

def test_input_forms_agree():
    rng = np.random.default_rng(6)
    N, L = 120, 40
    Y = random_Y(rng, N, L)
    ips = inv_propensity(Y)
    S = rng.integers(0, 5, size=(N, L)).astype(np.float64) + 0.5   # ties, all stored if sparse
    base = evaluate(S, Y, inv_propensity=ips)
    forms = {
        "float32": S.astype(np.float32),
        "torch": torch.from_numpy(S),
        "torch_f16": torch.from_numpy(S).half(),
        "scipy": sp.csr_matrix(S),
        "ids_numpy": ref_ranking(S, 7),
        "ids_torch": torch.from_numpy(ref_ranking(S, 5)),
        "ids_int32": ref_ranking(S, 5).astype(np.int32),
    }
    for name, P in forms.items():
        assert evaluate(P, Y, inv_propensity=ips) == base, name
    for name, Yf in {"dense": Y.toarray(), "torch": torch.from_numpy(Y.toarray()),
                     "bool": Y.toarray() > 0, "csc": Y.tocsc(),
                     "ips_torch": None}.items():
        if Yf is None:
            assert evaluate(S, Y, inv_propensity=torch.from_numpy(ips)) == base
        else:
            assert evaluate(S, Yf, inv_propensity=ips) == base, name


def test_score_topk_batched_over_rows(monkeypatch):
    # Force many row batches in the dense top-k; results must not change.
    rng = np.random.default_rng(7)
    Y = random_Y(rng, 90, 25)
    S = rng.integers(0, 3, size=(90, 25)).astype(np.float32)
    ref = M._topk_dense(S, 5)
    np.testing.assert_array_equal(ref, ref_ranking(S, 5))
    monkeypatch.setattr(M, "_BLOCK_ELEMS", 25 * 7)
    np.testing.assert_array_equal(M._topk_dense(S, 5), ref)
    assert evaluate(S, Y) == evaluate(ref_ranking(S, 5), Y)


def test_nan_scores_rank_last():
    S = np.array([[np.nan, 0.1, 0.2, np.nan]])
    np.testing.assert_array_equal(M._topk_dense(S, 3)[0], [2, 1, 0])


def test_explicit_zeros_and_duplicates_in_Y():
    Y = sp.csr_matrix((np.array([1.0, 0.0, 1.0]), np.array([0, 1, 2]), np.array([0, 2, 3])),
                      shape=(2, 3))              # explicit zero at (0, 1) is not a positive
    ids = np.array([[1, 0, 2], [2, 0, 1]])
    res = evaluate(ids, Y, ks=(1,))
    assert res["P@1"] == pytest.approx(0.5)
    # Duplicate entries (COO input) are one positive.
    Yc = sp.coo_matrix((np.ones(3), (np.array([0, 0, 1]), np.array([0, 0, 2]))), shape=(2, 3))
    assert evaluate(ids, Yc, ks=(1, 3)) == evaluate(ids, Y, ks=(1, 3))


def test_negative_ids_are_no_prediction():
    Y = sp.csr_matrix(np.array([[1, 1, 0]], dtype=np.float32))
    res = evaluate(np.array([[0, -1, 1]]), Y, ks=(1, 2, 3))
    assert (res["P@1"], res["P@2"], res["P@3"]) == pytest.approx((1.0, 0.5, 2 / 3))


# --- streaming top-k -------------------------------------------------------------------------

@pytest.mark.parametrize("use_bias", [False, True])
def test_predict_topk_equals_full_argsort(use_bias):
    g = torch.Generator().manual_seed(0)
    N, d, L, k = 333, 8, 1000, 7
    E = torch.randn(N, d, generator=g, dtype=torch.float64)
    W = torch.randn(L, d, generator=g, dtype=torch.float64)
    bias = torch.randn(L, generator=g, dtype=torch.float64) if use_bias else None
    full = E @ W.T + (bias if use_bias else 0)
    ref = torch.argsort(full, dim=1, descending=True)[:, :k]
    got = predict_topk(E, W, k, bias=bias, row_batch=64, label_chunk=128)  # 6 x 8 blocks
    assert got.dtype == torch.int64 and got.shape == (N, k)
    assert torch.equal(got, ref)
    # An iterable of batches (of another size) gives the same result.
    it = predict_topk(iter(E.split(100)), W, k, bias=bias, row_batch=64, label_chunk=300)
    assert torch.equal(it, ref)
    # And it feeds evaluate like the scores do.
    Y = random_Y(np.random.default_rng(8), N, L, density=0.01)
    assert evaluate(got, Y) == evaluate(full.numpy(), Y)


def test_predict_topk_validation():
    E, W = torch.randn(10, 4), torch.randn(20, 4)
    with pytest.raises(ValueError, match="k=21"):
        predict_topk(E, W, 21)
    with pytest.raises(ValueError, match="k=0"):
        predict_topk(E, W, 0)
    with pytest.raises(ValueError, match="row_batch=0"):
        predict_topk(E, W, 3, row_batch=0)
    with pytest.raises(ValueError, match=r"\(10, 5\)"):
        predict_topk(torch.randn(10, 5), W, 3)
    with pytest.raises(ValueError, match="bias"):
        predict_topk(E, W, 3, bias=torch.zeros(19))
    assert predict_topk(iter([]), W, 3).shape == (0, 3)


# --- keys and validation ---------------------------------------------------------------------

def test_keys_present_and_absent():
    rng = np.random.default_rng(9)
    Y = random_Y(rng, 20, 10)
    S = rng.random((20, 10))
    res = evaluate(S, Y)
    assert list(res) == ["P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5"]
    res = evaluate(S, Y, ks=(2, 4), inv_propensity=inv_propensity(Y))
    assert list(res) == ["P@2", "P@4", "nDCG@2", "nDCG@4", "PSP@2", "PSP@4",
                         "PSnDCG@2", "PSnDCG@4"]
    assert all(0.0 <= v <= 1.0 for v in res.values())


@pytest.mark.parametrize("ks,match", [((0, 3), r"ks=\(0, 3\)"), ((1, -2), r"ks=\(1, -2\)"),
                                      ((), r"ks=\(\)"), ((1.5,), r"ks=\(1.5,\)")])
def test_invalid_ks(ks, match):
    Y = sp.csr_matrix(np.eye(6, dtype=np.float32))
    with pytest.raises(ValueError, match=match):
        evaluate(np.eye(6), Y, ks=ks)


def test_invalid_shapes():
    Y = sp.csr_matrix(np.eye(6, dtype=np.float32))
    with pytest.raises(ValueError, match=r"K=3.*max\(ks\)=5"):
        evaluate(np.zeros((6, 3), dtype=np.int64), Y)
    with pytest.raises(ValueError, match=r"\(6, 7\).*\(6, 6\)"):
        evaluate(np.zeros((6, 7)), Y)
    with pytest.raises(ValueError, match=r"\(5, 6\).*\(6, 6\)"):
        evaluate(torch.zeros(5, 6), Y)
    with pytest.raises(ValueError, match=r"\(6, 4\).*\(6, 6\)"):
        evaluate(sp.csr_matrix((6, 4)), Y)
    with pytest.raises(ValueError, match="5 rows.*N=6"):
        evaluate(np.zeros((5, 5), dtype=np.int64), Y)
    with pytest.raises(ValueError, match="label 6"):
        evaluate(np.full((6, 5), 6), Y)
    with pytest.raises(ValueError, match="inv_propensity has 5"):
        evaluate(np.eye(6), Y, inv_propensity=np.ones(5))
    with pytest.raises(ValueError, match="N=0"):
        evaluate(np.zeros((0, 6)), sp.csr_matrix((0, 6)))


# --- GPU -------------------------------------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_agree_with_cpu():
    rng = np.random.default_rng(10)
    N, L = 300, 200
    Y = random_Y(rng, N, L, density=0.03)
    ips = inv_propensity(Y)
    S = rng.integers(0, 6, size=(N, L)).astype(np.float32)
    base = evaluate(S, Y, inv_propensity=ips)
    Sg = torch.from_numpy(S).cuda()
    assert evaluate(Sg, Y, inv_propensity=ips) == base
    assert evaluate(Sg, torch.from_numpy(Y.toarray()).cuda(),
                    inv_propensity=torch.from_numpy(ips).cuda()) == base
    E = torch.randn(N, 16, device="cuda", dtype=torch.float64)
    W = torch.randn(L, 16, device="cuda", dtype=torch.float64)
    ids = predict_topk(E, W, 5, row_batch=64, label_chunk=64)
    assert ids.device.type == "cuda"
    assert torch.equal(ids, torch.argsort(E @ W.T, dim=1, descending=True)[:, :5])
    assert evaluate(ids, Y) == evaluate((E @ W.T).cpu().numpy(), Y)
