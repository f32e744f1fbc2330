"""Label clusters for the meta-classifier: PIFA label features, balanced spherical 2-means.

PIFA (positive instance feature aggregation): a label's feature vector is the L2-normalised
sum of the L2-normalised input rows (TF-IDF) of its training positives, ``Z = norm(Y^T
norm(X))``, kept sparse ([L, D] with nnz(Z) <= nnz(Y) * the longest row of X).

The clusters come from a balanced hierarchical spherical 2-means (as in Parabel, AttentionXML
and LightXML): every node of the tree is split into two halves whose sizes differ by at most
one, by alternating (a) both halves' centroids = the normalised sum of their members' rows,
and (b) a balanced assignment: the members sorted by ``z . (c_left - c_right)``, the first
half left.  All the nodes of a level are split at once (sorting by node then score), and
centroids stay sparse: a centroid has at most the features of its members, so a level costs
O(nnz(Z) log nnz(Z)) time and O(nnz(Z) + L) memory; nothing dense of size L x D is formed.

K need not be a power of two: the last level splits only ``K - (nodes so far)`` nodes (the
largest), so leaves have n / 2^depth or n / 2^(depth - 1) labels.  The result is a function
of the data and ``seed`` (ties in the sort aside, which do not occur with real scores).
Runs on the device given (a GPU when present).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..validation import check_int

__all__ = ["pifa", "balanced_clusters", "LabelClusters", "default_meta_clusters",
           "cluster_labels"]


def default_meta_clusters(num_labels: int) -> int:
    """K = the power of two nearest sqrt(L) (at least 2, at most L): the MIPS index's
    granularity (K ~ sqrt(L), clusters of ~sqrt(L) labels), with equal-depth leaves."""
    L = check_int("num_labels", num_labels, 2)
    return int(min(L, max(2, 2 ** round(math.log2(math.sqrt(L))))))


def _normalise_rows(M: sp.csr_matrix) -> sp.csr_matrix:
    M = sp.csr_matrix(M, dtype=np.float32, copy=True)
    norms = np.sqrt(np.asarray(M.multiply(M).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    M.data /= np.repeat(norms, np.diff(M.indptr)).astype(np.float32)
    return M


def pifa(X: sp.spmatrix, Y: sp.spmatrix) -> sp.csr_matrix:
    """PIFA label features ``[L, D]`` (sparse CSR, rows L2-normalised; a label with no
    training positive has a zero row)."""
    X, Y = sp.csr_matrix(X), sp.csr_matrix(Y)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows and Y {Y.shape[0]}: they must match")
    Yb = sp.csr_matrix((np.ones_like(Y.data, dtype=np.float32), Y.indices, Y.indptr), Y.shape)
    return _normalise_rows(Yb.T.tocsr() @ _normalise_rows(X))


def _centroid_gaps(groups: torch.Tensor, group_node: torch.Tensor, side_of_entry: torch.Tensor,
                   val: torch.Tensor, n_groups: int, n_nodes: int) -> torch.Tensor:
    """Per (node, feature) group: the feature's weight in the node's left unit centroid minus
    that in its right one.  Centroid = normalised sum of the half's rows, restricted to the
    node's features (the groups), so it is never dense."""
    sums = torch.zeros(2 * n_groups, dtype=val.dtype, device=val.device)
    sums.index_add_(0, side_of_entry * n_groups + groups, val)
    sums = sums.view(2, n_groups)
    norm2 = torch.zeros(2, n_nodes, dtype=val.dtype, device=val.device)
    norm2[0].index_add_(0, group_node, sums[0] * sums[0])
    norm2[1].index_add_(0, group_node, sums[1] * sums[1])
    unit = sums / norm2.sqrt().clamp_min(1e-12)[:, group_node]
    return unit[0] - unit[1]


def _balanced_halves(node: torch.Tensor, score: torch.Tensor, sizes: torch.Tensor,
                     split: torch.Tensor) -> torch.Tensor:
    """Side (0 left, 1 right) per label: within each node the ceil(n/2) highest scores go
    left; nodes with ``split`` False keep everyone left."""
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(node[order], stable=True)]  # by node, then score descending
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - starts[node[order]]
    half = (sizes + 1) // 2
    return ((rank >= half[node]) & split[node]).to(torch.int64)


def balanced_clusters(Z: sp.csr_matrix, K: int, *, seed: int = 0, iters: int = 8,
                      device: torch.device | str = "cpu", return_tree: bool = False):
    """Cluster the rows of ``Z`` ([L, D], unit rows) into ``K`` balanced clusters.

    Returns int64 ``[L]`` cluster ids in ``[0, K)`` (numpy).  ``iters``: 2-means iterations per
    level.  ``return_tree``: also return, per level, the node ids before the split and the side
    each label went to (for tests of the balance of every split).
    """
    Z = sp.csr_matrix(Z)
    L, D = Z.shape
    K = check_int("K", K, 1, L)
    iters = check_int("iters", iters, 1)
    dev = torch.device(device)
    coo = Z.tocoo()
    row = torch.as_tensor(coo.row, dtype=torch.int64, device=dev)
    col = torch.as_tensor(coo.col, dtype=torch.int64, device=dev)
    val = torch.as_tensor(coo.data, dtype=torch.float32, device=dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed))
    node = torch.zeros(L, dtype=torch.int64, device=dev)
    n_nodes, tree = 1, []
    while n_nodes < K:
        sizes = torch.bincount(node, minlength=n_nodes)
        # Split the largest nodes (all of them unless this is a partial last level).
        n_split = min(n_nodes, K - n_nodes)
        split = torch.zeros(n_nodes, dtype=torch.bool, device=dev)
        split[torch.argsort(-sizes, stable=True)[:n_split]] = True
        split &= sizes >= 2
        # The (node, feature) groups of this level: a node's centroids live on its features.
        uniq, groups = torch.unique(node[row] * D + col, return_inverse=True)
        group_node = uniq // D
        # Start: a random balanced split of every node.
        side = _balanced_halves(node, torch.rand(L, generator=gen, device=dev), sizes, split)
        for _ in range(iters):
            gap = _centroid_gaps(groups, group_node, side[row], val, uniq.numel(), n_nodes)
            # z . (c_left - c_right) for every label, from its non-zeros.
            score = torch.zeros(L, dtype=torch.float32, device=dev).index_add_(
                0, row, val * gap[groups])
            new = _balanced_halves(node, score, sizes, split)
            if torch.equal(new, side):
                break
            side = new
        if return_tree:
            tree.append((node.cpu().numpy().copy(), side.cpu().numpy().copy(),
                         split.cpu().numpy().copy()))
        # Renumber: a split node becomes two consecutive nodes, an unsplit one stays one.
        width = 1 + split.to(torch.int64)
        first = torch.cumsum(width, 0) - width
        node = first[node] + side
        n_nodes = int(width.sum())
    out = node.cpu().numpy()
    return (out, tree) if return_tree else out


@dataclass
class LabelClusters:
    """A partition of the labels: ``assign`` [L] (cluster of each label) and ``members``
    [K, S] (each cluster's labels, padded with -1; S the largest cluster)."""

    assign: torch.Tensor
    members: torch.Tensor
    seconds: float = 0.0

    @property
    def num_clusters(self) -> int:
        return int(self.members.shape[0])

    @classmethod
    def from_assign(cls, assign: np.ndarray | torch.Tensor, K: int,
                    device: torch.device | str = "cpu", seconds: float = 0.0) -> "LabelClusters":
        a = torch.as_tensor(np.asarray(assign), dtype=torch.int64, device=device)
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= K):
            raise ValueError(f"cluster ids out of range: allowed [0, {K})")
        sizes = torch.bincount(a, minlength=K)
        order = torch.argsort(a, stable=True)
        starts = torch.cumsum(sizes, 0) - sizes
        slot = torch.arange(a.numel(), device=a.device) - starts[a[order]]
        S = max(int(sizes.max()) if K else 1, 1)
        members = torch.full((K, S), -1, dtype=torch.int64, device=a.device)
        members[a[order], slot] = order
        return cls(a, members, float(seconds))

    def memory_bytes(self) -> int:
        return int(self.assign.numel() * 8 + self.members.numel() * 8)


def cluster_labels(X: sp.spmatrix, Y: sp.spmatrix, K: int, *, seed: int = 0,
                   device: torch.device | str = "cpu") -> LabelClusters:
    """PIFA features of the labels, then ``K`` balanced clusters; ``seconds`` is the cost."""
    t0 = time.perf_counter()
    Z = pifa(X, Y)
    assign = balanced_clusters(Z, K, seed=seed, device=device)
    return LabelClusters.from_assign(assign, K, device, time.perf_counter() - t0)
