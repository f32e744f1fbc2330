"""The auxiliary model p_n(y|x) of Bamler & Mandt (ICLR 2020): a balanced binary label tree.

Model
-----
Inputs enter as their PCA projection ``z`` (k dims, see :mod:`.pca`).  The L
labels sit at the leaves of a complete binary tree of depth
``H = ceil(log2 L)`` with ``P = 2**H`` leaves; the ``P - L`` padding leaves
have probability exactly 0.  Internal nodes are stored in heap order (node
``i`` has children ``2i+1`` (left) and ``2i+2`` (right); leaf ``j`` is heap
node ``P-1+j``).  Node ``v`` goes right (zeta=+1) or left (zeta=-1) with
probability ``sigma(zeta * (w_v . z + b_v))``, so

    log p_n(y|x) = sum over the root-to-leaf path of y of log sigma(zeta_v (w_v . z + b_v)).

Every subtree's two halves hold ``floor(n/2)`` (left) and ``ceil(n/2)`` (right)
of its ``n`` real labels, so sibling subtrees differ by at most one real label
and a padding leaf only ever hangs under a node with exactly one real label.
Such a node (and any node with no real label below it) is *forced*: it goes
right with probability 1, which is what gives padding leaves probability 0.
For free nodes the logit is clipped to ``[-logit_clip, logit_clip]`` when the
model is evaluated, so every real label has probability at least
``sigma(-logit_clip) ** H > 0`` (the numerical floor that keeps labels without
training rows, or far from an input, reachable; log-probabilities stay finite).

Fitting (top-down, greedy, one depth level at a time)
-----------------------------------------------------
Training pairs ``(x, y)`` (a row's first label, or every (row, positive label)
pair) are routed to the node whose subtree holds ``y``.  For every free node
of a level, all at once:

1. initialise ``b_v = 0`` and ``w_v`` = the dominant eigenvector of the
   covariance of the per-label sums ``{S_y = sum_{x in D_y} z_x : y below v}``
   (closed form ``(S_a - S_b)/|S_a - S_b|`` for two labels);
2. split the node's labels: the ``ceil(n/2)`` labels with the largest
   ``Delta_y = sum_{x in D_y} (w_v . z_x + b_v) = w_v . S_y + b_v |D_y|`` go
   right (ties keep their current side);
3. repeat up to ``max_rounds`` times: ``newton_steps`` (default 1) damped
   Newton steps on the regularised logistic loss
   ``sum_{(x,y) below v} softplus(-zeta_y (w_v . z_x + b_v)) + lambda_n/2 |(w_v, b_v)|^2``
   (``zeta_y`` = +1 if y is in the right half), then re-split as in 2; a node
   leaves the loop when its split no longer changes (warm starts make one
   Newton step per round enough: most rounds move only a few labels);
4. finally Newton to convergence (max step below ``newton_tol``) on every
   node's final split, so its parameters are the regularised maximum
   likelihood fit for the split it ends with.

The bias is regularised too: a node whose labels on one side have no training
rows would otherwise push ``b_v`` to infinity.  Newton steps are damped (step
halving) so the regularised loss never increases.  Per-node gradients and
Hessians are accumulated over the pairs sorted by node (``index_add_``, and
blocked batched matmuls for the Hessians) and solved with one batched
``torch.linalg.solve``; the Python loops run over
depth levels, alternation rounds, Newton steps and memory chunks, never over
nodes.  Fitting uses float64 and no randomness, so it is deterministic
(bitwise on CPU; on CUDA ``index_add_`` uses atomics and sums may differ in the
last bits).
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ...validation import check_choice, check_float, check_int

PAIRS = ("first", "all")


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------
class LabelTree:
    """A fitted balanced label tree (all parameters are tensors on one device).

    ``weight`` float32 [P-1, k], ``bias`` float32 [P-1], ``free`` bool [P-1]
    (False: forced to go right), ``leaf_label`` int64 [P] (label id or -1 for
    padding), ``label_leaf`` int64 [L] (leaf index of each label).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, free: torch.Tensor,
                 leaf_label: torch.Tensor, label_leaf: torch.Tensor, *,
                 logit_clip: float = 20.0, info: dict | None = None) -> None:
        P = leaf_label.shape[0]
        if P < 2 or P & (P - 1):
            raise ValueError(f"leaf_label has {P} entries, expected a power of two >= 2")
        if weight.shape[0] != P - 1 or bias.shape != (P - 1,) or free.shape != (P - 1,):
            raise ValueError("weight/bias/free must have P-1 rows (internal nodes in heap order)")
        self.weight = weight.float().contiguous()
        self.bias = bias.float().contiguous()
        self.free = free.bool()
        self.leaf_label = leaf_label.long()
        self.label_leaf = label_leaf.long()
        self.logit_clip = check_float("logit_clip", logit_clip, 0.0, low_inclusive=False)
        self.info = dict(info or {})

    # -- shape ------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return int(self.label_leaf.shape[0])

    @property
    def num_leaves(self) -> int:
        return int(self.leaf_label.shape[0])

    @property
    def depth(self) -> int:
        return int(self.num_leaves).bit_length() - 1

    @property
    def k(self) -> int:
        return int(self.weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.weight.device

    def to(self, device: torch.device | str) -> "LabelTree":
        """A copy with every tensor on ``device`` (self if already there)."""
        if torch.device(device) == self.device:
            return self
        return LabelTree(self.weight.to(device), self.bias.to(device), self.free.to(device),
                         self.leaf_label.to(device), self.label_leaf.to(device),
                         logit_clip=self.logit_clip, info=self.info)

    # -- evaluation -------------------------------------------------------
    def _effective_logits(self, a: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        # Forced nodes go right with probability 1: logit +inf (logsigmoid(-inf) = -inf
        # for the padding side, exactly 0 probability).
        a = a.clamp(-self.logit_clip, self.logit_clip)
        return torch.where(self.free[nodes], a, torch.full_like(a, math.inf))

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_n(y|x) of ``labels`` (int64 [B, K], real label ids) given ``z`` [B, k] -> [B, K].

        Walks each label's path from its leaf to the root: O(K k log L) per row.
        """
        z = z.to(self.weight.dtype)
        node = self.label_leaf[labels] + (self.num_leaves - 1)  # heap index of the leaf
        lp = torch.zeros(labels.shape, dtype=z.dtype, device=z.device)
        for _ in range(self.depth):
            parent = (node - 1) // 2
            a = _rowdot(self.weight[parent], z[:, None, :]) + self.bias[parent]
            a = self._effective_logits(a, parent)
            lp = lp + F.logsigmoid(torch.where(node % 2 == 0, a, -a))  # even heap index = right child
            node = parent
        return lp

    def leaf_log_prob_all(self, z: torch.Tensor) -> torch.Tensor:
        """log-probability of every leaf, padding included (-inf), [B, P] in leaf order."""
        z = z.to(self.weight.dtype)
        lp = torch.zeros((z.shape[0], 1), dtype=z.dtype, device=z.device)
        for d in range(self.depth):
            nodes = torch.arange(2 ** d - 1, 2 ** (d + 1) - 1, device=z.device)
            a = self._effective_logits(z @ self.weight[nodes].T + self.bias[nodes], nodes)
            lp = torch.stack([lp + F.logsigmoid(-a), lp + F.logsigmoid(a)], dim=2).reshape(z.shape[0], -1)
        return lp

    def log_prob_all(self, z: torch.Tensor) -> torch.Tensor:
        """log p_n(y|x) of every label, [B, L] in label-id order (O(L k) per row; chunk B for large L)."""
        return self.leaf_log_prob_all(z)[:, self.label_leaf]

    def sample(self, z: torch.Tensor, num_samples: int, *,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sampling: ``num_samples`` labels per row of ``z`` [B, k].

        Returns ``(labels int64 [B, R], log_prob [B, R])``; O(k log L) per draw.
        Padding leaves are never returned (forced nodes go right with
        probability 1 and the uniforms lie in [0, 1)).
        """
        z = z.to(self.weight.dtype)
        B, R, H = z.shape[0], int(num_samples), self.depth
        u = torch.rand((H, B, R), generator=generator, device=z.device, dtype=torch.float64)
        node = torch.zeros((B, R), dtype=torch.int64, device=z.device)
        lp = torch.zeros((B, R), dtype=z.dtype, device=z.device)
        for d in range(H):
            a = _rowdot(self.weight[node], z[:, None, :]) + self.bias[node]
            a = self._effective_logits(a, node)
            right = u[d] < torch.sigmoid(a.double())
            lp = lp + F.logsigmoid(torch.where(right, a, -a))
            node = 2 * node + 1 + right.long()
        return self.leaf_label[node - (self.num_leaves - 1)], lp

    # -- checkpoints ------------------------------------------------------
    def state_dict(self) -> dict:
        return {"weight": self.weight.cpu(), "bias": self.bias.cpu(), "free": self.free.cpu(),
                "leaf_label": self.leaf_label.cpu(), "label_leaf": self.label_leaf.cpu(),
                "logit_clip": self.logit_clip}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> "LabelTree":
        return cls(*(torch.as_tensor(state[n]).to(device)
                     for n in ("weight", "bias", "free", "leaf_label", "label_leaf")),
                   logit_clip=float(state["logit_clip"]))


# ---------------------------------------------------------------------------
# Training pairs
# ---------------------------------------------------------------------------
def training_pairs(Y: sp.spmatrix, pairs: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(row ids, label ids) of the tree's training pairs, int64 each.

    ``"all"``: every (row, positive label); ``"first"``: each row's first label
    (the smallest label id, CSR indices being sorted), the reduction to
    softmax classification of Bamler & Mandt.  Rows without labels are skipped.
    """
    check_choice("pairs", pairs, PAIRS)
    Y = Y.tocsr()
    if not Y.has_sorted_indices:
        Y = Y.sorted_indices()
    counts = np.diff(Y.indptr)
    if pairs == "all":
        return (np.repeat(np.arange(Y.shape[0], dtype=np.int64), counts),
                Y.indices.astype(np.int64))
    rows = np.flatnonzero(counts > 0).astype(np.int64)
    return rows, Y.indices[Y.indptr[rows]].astype(np.int64)


# ---------------------------------------------------------------------------
# Batched per-node logistic regression
# ---------------------------------------------------------------------------
def _augment(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)  # constant feature -> bias


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product of [..., m] tensors (einsum: several times faster than (a*b).sum(-1))."""
    return torch.einsum("...i,...i->...", a, b)


def _ranges(starts: torch.Tensor, counts: torch.Tensor, total: int) -> torch.Tensor:
    """The concatenated ranges ``starts[i] .. starts[i] + counts[i] - 1`` (``total`` = sum of counts)."""
    offset = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts, output_size=total)
    return torch.arange(total, device=starts.device) + offset


def _segment_gram(out: torch.Tensor, node: torch.Tensor, X: torch.Tensor,
                  weight: torch.Tensor | None = None, *, chunk: int = 65536) -> None:
    """out[v] += sum_{i: node[i] = v} weight[i] X[i] X[i]^T (out [M, m, m], ``node`` sorted).

    A per-row outer product followed by ``index_add_`` would move m*m numbers
    per row; instead each node's rows are cut into zero-padded blocks (of 2 to
    32 rows, about the mean rows per node), one batched matmul forms every
    block's Gram matrix, and only the blocks are scattered to their nodes.
    A chunk inside a single node (shallow levels) is one plain matmul.
    """
    n, m = X.shape
    M = out.shape[0]
    flat = out.view(M, m * m)
    for s in range(0, n, chunk):
        x, idx = X[s:s + chunk], node[s:s + chunk]
        xw = x if weight is None else x * weight[s:s + chunk, None]
        if idx[0] == idx[-1]:
            out[idx[0]] += xw.T @ x
            continue
        # Rank of each row inside its node, then its (block, slot) in the padded layout.
        first = torch.ones_like(idx, dtype=torch.bool)
        first[1:] = idx[1:] != idx[:-1]
        seg_id = torch.cumsum(first, 0) - 1
        seg_start = first.nonzero().squeeze(1)
        block = 1 << max(1, min(5, (x.shape[0] // seg_start.shape[0]).bit_length() - 1))
        rank = torch.arange(idx.shape[0], device=idx.device) - seg_start[seg_id]
        seg_len = torch.diff(torch.cat([seg_start, seg_start.new_tensor([idx.shape[0]])]))
        seg_blocks = (seg_len + block - 1) // block
        blk0 = torch.cumsum(seg_blocks, 0) - seg_blocks
        dest = (blk0[seg_id] + rank // block) * block + rank % block
        nb = int(seg_blocks.sum())
        A = x.new_zeros((nb * block, m)).index_copy_(0, dest, x).view(nb, block, m)
        Aw = A if weight is None else (  # unweighted: xw is x, one padded copy serves both
            x.new_zeros((nb * block, m)).index_copy_(0, dest, xw).view(nb, block, m))
        gram = torch.bmm(Aw.transpose(1, 2), A).reshape(nb, m * m)
        flat.index_add_(0, torch.repeat_interleave(idx[seg_start], seg_blocks), gram)


def _logistic_stats(zt: torch.Tensor, theta: torch.Tensor, node: torch.Tensor, target: torch.Tensor,
                    lam: float, *, hessian: bool, chunk: int = 65536
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-node regularised logistic loss (and gradient, Hessian) at ``theta`` [M, k+1].

    Pairs: features ``zt`` [n, k+1] (last column 1), ``node`` [n] (sorted, in
    [0, M)), ``target`` [n] (1.0 = right).
    Loss_v = sum_pairs softplus(a) - t a + lam/2 |theta_v|^2, a = theta_v . zt.
    Returns ``(loss [M], grad [M, k+1] | None, hess [M, k+1, k+1] | None)``.
    Pairs are processed in cache-sized chunks; a chunk inside one node (the
    shallow levels) uses matrix-vector products instead of gathers/scatters.
    """
    M, m = theta.shape
    loss = 0.5 * lam * (theta * theta).sum(1)
    grad = lam * theta if hessian else None
    hess = None
    if hessian:
        hess = theta.new_zeros((M, m, m))
        hess.diagonal(dim1=1, dim2=2).fill_(lam)
    for s in range(0, zt.shape[0], chunk):
        x, idx, t = zt[s:s + chunk], node[s:s + chunk], target[s:s + chunk]
        v = int(idx[0])
        single = v == int(idx[-1])
        a = x @ theta[v] if single else _rowdot(x, theta[idx])
        ell = F.softplus(a) - t * a
        if single:
            loss[v] += ell.sum()
        else:
            loss.index_add_(0, idx, ell)
        if not hessian:
            continue
        p = torch.sigmoid(a)
        if single:
            grad[v] += x.T @ (p - t)
            hess[v] += (x * (p * (1 - p))[:, None]).T @ x
        else:
            grad.index_add_(0, idx, (p - t)[:, None] * x)
            _segment_gram(hess, idx, x, p * (1 - p), chunk=chunk)
    return loss, grad, hess


def newton_step(zt: torch.Tensor, theta: torch.Tensor, node: torch.Tensor, target: torch.Tensor,
                lam: float, active: torch.Tensor | None = None, *, max_halvings: int = 8,
                chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One damped Newton step on the regularised logistic loss of every ``active`` node.

    ``theta`` [M, k+1] (weights, then bias); pairs: ``zt`` [n, k+1] (z and a
    constant 1), ``node`` [n] sorted, ``target`` [n] (1.0 = right); only pairs
    of active nodes (bool [M], default all) may be passed.  All active nodes
    are solved in one batched ``torch.linalg.solve`` (work and memory scale
    with the active nodes only).  The full step is halved per node until the
    loss does not increase; a node that never gets a decrease keeps its
    parameters.  Returns ``(theta_new, loss_before [M], loss_after [M],
    step [M])``, ``step`` = max-abs parameter change per node; the losses are
    NaN for inactive nodes.
    """
    M, dev = theta.shape[0], theta.device
    ids = (torch.arange(M, device=dev) if active is None else active.nonzero().squeeze(1))
    remap = torch.full((M,), -1, dtype=torch.int64, device=dev)
    remap[ids] = torch.arange(ids.shape[0], device=dev)
    nc = remap[node]  # compact node ids (monotone, so still sorted)
    th = theta[ids]
    loss0, grad, hess = _logistic_stats(zt, th, nc, target, lam, hessian=True, chunk=chunk)
    delta = torch.linalg.solve(hess, grad.unsqueeze(2)).squeeze(2)
    scale = torch.ones(ids.shape[0], dtype=theta.dtype, device=dev)
    new = th - delta
    loss1, _, _ = _logistic_stats(zt, new, nc, target, lam, hessian=False)
    tol = 1e-12 * loss0.abs()
    for _ in range(max_halvings):
        bad = loss1 > loss0 + tol
        if not bool(bad.any()):
            break
        scale = torch.where(bad, scale * 0.5, scale)
        new = th - scale[:, None] * delta
        sel = bad[nc]  # re-evaluate only the pairs of nodes that backtracked
        l_bad, _, _ = _logistic_stats(zt[sel], new, nc[sel], target[sel], lam, hessian=False)
        loss1 = torch.where(bad, l_bad, loss1)
    failed = loss1 > loss0 + tol
    new = torch.where(failed[:, None], th, new)
    loss1 = torch.where(failed, loss0, loss1)
    out = theta.clone()
    out[ids] = new
    before = torch.full((M,), math.nan, dtype=theta.dtype, device=dev)
    after = before.clone()
    before[ids], after[ids] = loss0, loss1
    step = torch.zeros(M, dtype=theta.dtype, device=dev)
    step[ids] = (new - th).abs().amax(1)
    return out, before, after, step


# ---------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------
_MAX_POLISH = 25  # Newton steps for the final fit of a node to its stable split


def _level_segments(num_labels: int, depth: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per level d: (start, count) of every node's contiguous segment of label positions.

    Left child: floor(n/2) labels, right child: ceil(n/2)."""
    start = torch.zeros(1, dtype=torch.int64, device=device)
    count = torch.full((1,), num_labels, dtype=torch.int64, device=device)
    out = [(start, count)]
    for _ in range(depth):
        left = count // 2
        start = torch.stack([start, start + left], 1).reshape(-1)
        count = torch.stack([left, count - left], 1).reshape(-1)
        out.append((start, count))
    return out


def _init_directions(S: torch.Tensor, lnode: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Dominant eigenvector of the covariance of the per-label sums ``S`` [nl, k] in each node.

    ``lnode`` [nl] (sorted) is each label's node, ``n`` [M] the label counts."""
    M, k = n.shape[0], S.shape[1]
    dt, dev = S.dtype, S.device
    w = torch.zeros((M, k), dtype=dt, device=dev)
    w[:, 0] = 1.0  # nodes with < 2 labels are forced; any unit vector will do
    nf = n.clamp(min=1).to(dt)
    two = (n == 2).nonzero().squeeze(1)
    if two.numel():  # covariance of two points is rank one: (S_a - S_b)(S_a - S_b)^T / 4
        first = torch.cumsum(n, 0) - n
        d = S[first[two]] - S[first[two] + 1]
        norm = d.norm(dim=1, keepdim=True)
        w[two] = torch.where(norm > 0, d / norm.clamp(min=1e-300), w[two])
    many = n >= 3
    if bool(many.any()):
        sel = many[lnode]
        mean = torch.zeros((M, k), dtype=dt, device=dev).index_add_(0, lnode[sel], S[sel]) / nf[:, None]
        cov = torch.zeros((M, k, k), dtype=dt, device=dev)
        _segment_gram(cov, lnode[sel], S[sel])
        ids = many.nonzero().squeeze(1)
        c = cov[ids] / nf[ids, None, None] - mean[ids, :, None] * mean[ids, None, :]
        w[ids] = torch.linalg.eigh(c).eigenvectors[:, :, -1]
    return w


def fit_label_tree(z: torch.Tensor, pair_rows: torch.Tensor | np.ndarray,
                   pair_labels: torch.Tensor | np.ndarray, num_labels: int, *,
                   lambda_n: float = 0.1, max_rounds: int = 20, newton_steps: int = 1,
                   newton_tol: float = 1e-6, logit_clip: float = 20.0,
                   node_chunk: int = 65536, pair_chunk: int = 65536) -> LabelTree:
    """Fit the balanced label tree on ``z`` [N, k] (its device is used) and the
    training pairs ``(pair_rows[i], pair_labels[i])``; see the module docstring.

    ``newton_steps``: Newton steps per alternation round; ``newton_tol``: the
    final fit of each node stops when no parameter moves by more than
    ``newton_tol * (1 + max |theta_v|)``.  Working memory is about
    ``(k+1) * 8`` bytes per training pair (the pairs' features, sorted by node).
    ``info`` of the returned tree holds ``fit_s``, ``num_pairs`` and per level
    ``rounds`` (alternations until every split was stable), ``unstable``
    (nodes whose split still changed after ``max_rounds``) and ``time_s``.
    """
    t0 = time.perf_counter()
    L = check_int("num_labels", num_labels, 2)
    lam = check_float("lambda_n", lambda_n, 0.0, low_inclusive=False)
    check_int("max_rounds", max_rounds, 1)
    check_int("newton_steps", newton_steps, 1)
    check_float("newton_tol", newton_tol, 0.0)
    check_int("node_chunk", node_chunk, 1)
    check_int("pair_chunk", pair_chunk, 2)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D [N, k], got shape {tuple(z.shape)}")
    dev = z.device
    Z = z.to(torch.float64)
    N, k = Z.shape
    pr = torch.as_tensor(pair_rows, dtype=torch.int64, device=dev).reshape(-1)
    pl = torch.as_tensor(pair_labels, dtype=torch.int64, device=dev).reshape(-1)
    if pr.shape != pl.shape:
        raise ValueError(f"pair_rows ({pr.shape[0]}) and pair_labels ({pl.shape[0]}) differ in length")
    if pr.numel() == 0:
        raise ValueError("no training pairs: Y_train has no positive labels")
    if int(pl.min()) < 0 or int(pl.max()) >= L:
        raise ValueError(f"pair_labels out of range: allowed [0, {L - 1}]")
    if int(pr.min()) < 0 or int(pr.max()) >= N:
        raise ValueError(f"pair_rows out of range: allowed [0, {N - 1}]")

    H = max(1, math.ceil(math.log2(L)))
    P = 2 ** H
    # Per-label sums of (z, 1): Delta_y = theta_v . Sa_y is all the re-split needs.
    Sa = torch.zeros((L, k + 1), dtype=torch.float64, device=dev)
    for s in range(0, pr.shape[0], pair_chunk):
        Sa.index_add_(0, pl[s:s + pair_chunk], _augment(Z[pr[s:s + pair_chunk]]))

    segs = _level_segments(L, H, dev)
    perm = torch.arange(L, device=dev)  # position -> label; node segments are contiguous
    theta_all = torch.zeros((P - 1, k + 1), dtype=torch.float64, device=dev)
    free_all = torch.zeros(P - 1, dtype=torch.bool, device=dev)
    local_of = torch.empty(L, dtype=torch.int64, device=dev)  # scratch: label -> local index
    levels = []
    for d in range(H):
        t_level = time.perf_counter()
        M, base = 2 ** d, 2 ** d - 1
        start, count = segs[d]
        free_all[base:base + M] = count >= 2
        node_of_pos = torch.repeat_interleave(torch.arange(M, device=dev), count)
        label_pos = torch.empty_like(perm)
        label_pos[perm] = torch.arange(L, device=dev)
        pnode = node_of_pos[label_pos[pl]]
        order = torch.argsort(pnode, stable=True)
        pr, pl, pnode = pr[order], pl[order], pnode[order]
        ptr = torch.searchsorted(pnode, torch.arange(M + 1, device=dev))
        start_c, count_c, ptr_c = start.tolist(), count.tolist(), ptr.tolist()
        rounds_max, unstable = 0, 0
        for m0 in range(0, M, node_chunk):
            m1 = min(m0 + node_chunk, M)
            if max(count_c[m0:m1]) < 2:
                continue
            q0, q1 = start_c[m0], start_c[m1 - 1] + count_c[m1 - 1]
            p0, p1 = ptr_c[m0], ptr_c[m1]
            labels = perm[q0:q1]
            local_of[labels] = torch.arange(q1 - q0, device=dev)
            theta, order_loc, rounds, n_unstable = _fit_nodes(
                _augment(Z[pr[p0:p1]]), Sa[labels], node_of_pos[q0:q1] - m0, start[m0:m1] - q0,
                count[m0:m1], local_of[pl[p0:p1]], pnode[p0:p1] - m0, lam,
                max_rounds=max_rounds, newton_steps=newton_steps, newton_tol=newton_tol,
                chunk=pair_chunk)
            theta_all[base + m0:base + m1] = theta
            perm[q0:q1] = labels[order_loc]
            rounds_max, unstable = max(rounds_max, rounds), unstable + n_unstable
        levels.append({"depth": d, "nodes": M, "rounds": rounds_max, "unstable": unstable,
                       "time_s": time.perf_counter() - t_level})

    start, count = segs[H]
    real = count == 1
    leaf_label = torch.where(real, perm[start.clamp(max=L - 1)], torch.full_like(start, -1))
    label_leaf = torch.empty(L, dtype=torch.int64, device=dev)
    label_leaf[leaf_label[real]] = real.nonzero().squeeze(1)
    info = {"fit_s": time.perf_counter() - t0, "num_pairs": int(pl.shape[0]), "levels": levels,
            "lambda_n": lam, "max_rounds": max_rounds, "newton_steps": newton_steps}
    return LabelTree(theta_all[:, :k].float(), theta_all[:, k].float(), free_all, leaf_label,
                     label_leaf, logit_clip=logit_clip, info=info)


def _fit_nodes(zt: torch.Tensor, Sa: torch.Tensor, lnode: torch.Tensor, nstart: torch.Tensor,
               n: torch.Tensor, plab: torch.Tensor, pnode: torch.Tensor, lam: float, *,
               max_rounds: int, newton_steps: int, newton_tol: float,
               chunk: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Fit a block of M consecutive nodes of one level (all of them at once).

    Labels are indexed locally 0..nl-1 in their current position order;
    ``lnode`` [nl] is the node of each position, ``nstart``/``n`` [M] the
    node segments (local positions).  Pairs: features ``zt``, ``plab`` (local
    label index), ``pnode`` (sorted).  Returns ``(theta [M, k+1], order [nl]
    (local labels in their new position order), rounds, unstable)``.
    """
    dev, M, nl = zt.device, n.shape[0], Sa.shape[0]
    k = zt.shape[1] - 1
    free = n >= 2
    pos_right = (torch.arange(nl, device=dev) - nstart[lnode]) >= (n // 2)[lnode]
    theta = torch.zeros((M, k + 1), dtype=zt.dtype, device=dev)
    theta[:, :k] = _init_directions(Sa[:, :k], lnode, n)
    theta[~free] = 0.0

    ptr = torch.searchsorted(pnode, torch.arange(M + 1, device=dev))

    def pairs_of(active: torch.Tensor) -> torch.Tensor | slice:
        # The pairs of the active nodes (pairs are sorted by node, so each node's are
        # a contiguous range): a slice (no copy) when they form one range, else
        # their indices, in O(active pairs).
        ids = active.nonzero().squeeze(1)
        if ids.numel() == 0:
            return slice(0, 0)
        cnt = ptr[ids + 1] - ptr[ids]
        total = int(cnt.sum())
        first = int(ptr[ids[0]])
        if int(ptr[ids[-1] + 1]) - first == total:
            return slice(first, first + total)
        return _ranges(ptr[ids], cnt, total)

    def resplit(active: torch.Tensor) -> torch.Tensor:
        # Sort each active node's labels by Delta ascending (stable: ties keep their
        # side, the current order being left half then right half); the top
        # ceil(n/2) go right.  Segments are contiguous, so the sorted labels go back
        # to the same positions.  Updates order/right in place, O(active labels);
        # returns which nodes changed their split.
        ids = active.nonzero().squeeze(1)
        cnt = n[ids]
        total = int(cnt.sum())
        pos = _ranges(nstart[ids], cnt, total)
        sub, sub_node = order[pos], lnode[pos]
        o1 = torch.argsort(_rowdot(Sa[sub], theta[sub_node]), stable=True)
        sub = sub[o1[torch.argsort(sub_node[o1], stable=True)]]
        side = pos_right[pos]
        moved = (right[sub] != side).to(zt.dtype)
        order[pos] = sub
        right[sub] = side
        return torch.zeros(M, dtype=zt.dtype, device=dev).index_add_(0, sub_node, moved) > 0

    def newton(active: torch.Tensor, steps: int, tol: float | None) -> torch.Tensor:
        th = theta
        for _ in range(steps):
            sel = pairs_of(active)
            z_s, n_s, l_s = zt[sel], pnode[sel], plab[sel]
            th, _, _, step = newton_step(z_s, th, n_s, right[l_s].to(zt.dtype), lam, active, chunk=chunk)
            if tol is not None:
                active = active & (step > tol * (1 + th.abs().amax(1)))
                if not bool(active.any()):
                    break
        return th

    order = torch.arange(nl, device=dev)
    right = torch.zeros(nl, dtype=torch.bool, device=dev)
    resplit(free)
    active = free.clone()
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        theta = newton(active, newton_steps, None)
        active = active & resplit(active)
        if not bool(active.any()):
            break
    # Every node's parameters: the regularised MLE for its final split.
    theta = newton(free, _MAX_POLISH, newton_tol)
    return theta, order, rounds, int(active.sum())
