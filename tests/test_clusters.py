import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xmcviz.samplers.clusters import (LabelClusters, balanced_clusters, cluster_labels,
                                      default_meta_clusters, pifa)


def _random_unit_rows(L=203, D=40, density=0.2, seed=0) -> sp.csr_matrix:
    Z = sp.random(L, D, density=density, random_state=seed, format="csr", dtype=np.float32)
    norms = np.sqrt(np.asarray(Z.multiply(Z).sum(1)).ravel())
    norms[norms == 0] = 1
    return sp.csr_matrix(sp.diags(1 / norms) @ Z)


def test_pifa_is_the_normalised_sum_of_normalised_positive_rows():
    rng = np.random.default_rng(0)
    X = sp.csr_matrix(rng.random((30, 12)) * (rng.random((30, 12)) < 0.4))
    Yd = (rng.random((30, 7)) < 0.3).astype(np.float32)
    Yd[:, 6] = 0  # a label without positives: a zero row
    Y = sp.csr_matrix(Yd)
    Z = pifa(X, Y)
    assert sp.issparse(Z) and Z.shape == (7, 12)
    Xd = X.toarray()
    Xn = Xd / np.maximum(np.linalg.norm(Xd, axis=1, keepdims=True), 1e-30)
    want = Y.toarray().T @ Xn
    want /= np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-30)
    np.testing.assert_allclose(Z.toarray(), want, atol=1e-6)
    assert np.allclose(np.linalg.norm(Z.toarray()[:6], axis=1), 1) and Z[6].nnz == 0


@pytest.mark.parametrize("K", [2, 8, 13, 203])
def test_every_split_is_balanced_and_there_are_K_clusters(K):
    Z = _random_unit_rows()
    assign, tree = balanced_clusters(Z, K, seed=3, return_tree=True)
    assert assign.shape == (203,) and set(np.unique(assign)) == set(range(K))
    for node, side, split in tree:
        for n in np.flatnonzero(split):
            left, right = np.sum((node == n) & (side == 0)), np.sum((node == n) & (side == 1))
            assert abs(int(left) - int(right)) <= 1
        assert not side[~split[node]].any()  # nodes not split keep everyone on one side
    sizes = np.bincount(assign, minlength=K)
    assert sizes.max() <= 2 * sizes.min() + 1


def test_clustering_is_deterministic_per_seed():
    Z = _random_unit_rows(seed=1)
    a = balanced_clusters(Z, 16, seed=7)
    assert np.array_equal(a, balanced_clusters(Z, 16, seed=7))
    assert not np.array_equal(a, balanced_clusters(Z, 16, seed=8))


def test_clusters_group_labels_with_shared_features():
    # Four groups of labels, each group's positives use their own block of features.
    rng = np.random.default_rng(0)
    rows, groups, per = 400, 4, 16
    g_row = rng.integers(0, groups, rows)
    X = np.zeros((rows, groups * 10))
    Y = np.zeros((rows, groups * per))
    for r in range(rows):
        g = g_row[r]
        X[r, g * 10 + rng.choice(10, 4, replace=False)] = rng.random(4) + 0.1
        Y[r, g * per + rng.choice(per, 3, replace=False)] = 1
    c = cluster_labels(sp.csr_matrix(X), sp.csr_matrix(Y), groups, seed=0)
    assign = c.assign.numpy()
    for g in range(groups):
        assert len(set(assign[g * per:(g + 1) * per])) == 1  # a whole group in one cluster
    assert len(set(assign)) == groups and c.seconds >= 0


def test_label_clusters_members_table():
    assign = np.array([2, 0, 2, 1, 0, 2])
    c = LabelClusters.from_assign(assign, 3)
    assert c.members.shape == (3, 3)
    for k in range(3):
        got = sorted(int(i) for i in c.members[k] if i >= 0)
        assert got == sorted(np.flatnonzero(assign == k).tolist())
    with pytest.raises(ValueError, match="allowed"):
        LabelClusters.from_assign(np.array([0, 3]), 3)


def test_default_clusters_and_bad_K():
    assert default_meta_clusters(983) == 32 and default_meta_clusters(4) == 2
    assert default_meta_clusters(1_000_000) == 1024
    with pytest.raises(ValueError, match="K=0 is out of range"):
        balanced_clusters(_random_unit_rows(), 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_clustering_on_cuda_is_balanced():
    a = balanced_clusters(_random_unit_rows(), 8, seed=0, device="cuda")
    sizes = np.bincount(a, minlength=8)
    assert sizes.max() - sizes.min() <= 1
