"""Meta-classifier negatives (LightXML-style): a head over label clusters picks the candidates.

The labels are partitioned into K balanced clusters of similar labels
(:mod:`xmcviz.samplers.clusters`: PIFA features, balanced spherical 2-means).  A meta-classifier,
a linear head ``[K, d]`` over the model's embedding (for ``--model linear`` the embedding is
the input itself), is trained jointly with the model by BCE on cluster targets (a row's
positive clusters).  At every step a row's candidate labels are the members of its top-m
clusters under the *current* head plus, as in LightXML, the clusters of its own positives;
the negatives are a uniform draw without replacement of R candidates that are not positives,
padded with uniform negatives over all labels when the candidates run short.

So the candidates are always fresh (the head moves with every step, no index to go stale)
but coarse: a whole cluster at a time, hard and easy labels of the cluster alike.  MIPS
negatives are the reverse: fine-grained (the top-scoring labels) but from a stale snapshot.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import check_float, check_int
from .base import SOURCE_META, SOURCE_UNIFORM, Negatives, NegativeSampler, Positives, SamplerEnv
from .clusters import LabelClusters, cluster_labels, default_meta_clusters
from .ops import (first_k_valid, first_occurrence, is_member, positives_on, sorted_positive_table,
                  uniform_excluding)

__all__ = ["MetaSampler", "default_meta_topk", "DEFAULT_META_LOSS_WEIGHT"]

DEFAULT_META_LOSS_WEIGHT = 1.0


def default_meta_topk(num_labels: int, num_negatives: int, clusters: int) -> int:
    """m = the fewest clusters whose labels cover R (``ceil(R K / L)``), in [1, K]."""
    return int(min(clusters, max(1, math.ceil(num_negatives * clusters / num_labels))))


class MetaSampler(NegativeSampler):
    """Negatives from the labels of the row's top-``topk`` clusters under a jointly trained head.

    ``clusters``: the label partition (:class:`~xmcviz.samplers.clusters.LabelClusters`).
    ``dim``: the width of the embedding the head reads (None: that of the first batch).
    ``loss_weight``: the weight of the head's BCE in the training loss.
    ``add_positive_clusters``: add the positives' own clusters to the candidates (LightXML's
    choice during training).  :meth:`candidate_topk` is LightXML's prediction (only the
    labels of the top-m clusters, ranked by label and cluster scores together).
    Columns are in no particular order; ``source`` is ``SOURCE_META`` for candidates and
    ``SOURCE_UNIFORM`` for padding, and a padding draw repeating a label of its row is masked.
    The head's parameters are :meth:`trainable` (the trainer gives them an Adam optimiser) and
    its loss is :meth:`auxiliary_loss`.
    """

    name = "meta"
    options = ("negatives", "meta_clusters", "meta_topk", "meta_loss_weight")

    @classmethod
    def from_config(cls, config, env: SamplerEnv) -> "MetaSampler":
        """Cluster the labels of ``env.dataset`` (seeded by ``config.seed``), or take the
        clusters of ``env.state`` when resuming (no reclustering)."""
        if env.dataset is None:
            raise ValueError("sampler 'meta' needs the training data (its X_train, Y_train "
                             "give the label clusters)")
        L = env.num_labels
        K = check_int("meta_clusters", default_meta_clusters(L) if config.meta_clusters is None
                      else config.meta_clusters, 2, L)
        t0 = time.perf_counter()
        if env.state is not None:  # resuming: the checkpoint's clusters
            clusters = LabelClusters.from_assign(env.state["assign"], K, env.device,
                                                 seconds=float(env.state.get("cluster_seconds", 0)))
            cached = True
        else:
            clusters = cluster_labels(env.dataset.X_train, env.dataset.Y_train, K,
                                      seed=config.seed, device=env.device)
            cached = False
        m = default_meta_topk(L, config.negatives, K) if config.meta_topk is None \
            else config.meta_topk
        weight = DEFAULT_META_LOSS_WEIGHT if config.meta_loss_weight is None \
            else config.meta_loss_weight
        sampler = cls(L, config.negatives, clusters, env.dim, topk=m, loss_weight=weight,
                      seed=config.seed, device=env.device)
        # The one-off cost, reported in config.json (resolved.sampler_setup) like an index build.
        sampler.setup_info = {"sampler": "meta", "clusters": K, "topk": sampler.topk,
                              "cluster_seconds": clusters.seconds, "from_checkpoint": cached,
                              "setup_seconds": time.perf_counter() - t0,
                              "extra_bytes": sampler.memory_bytes()}
        return sampler

    def __init__(self, num_labels: int, num_negatives: int, clusters: LabelClusters,
                 dim: int | None, *, topk: int = 1, loss_weight: float = DEFAULT_META_LOSS_WEIGHT,
                 add_positive_clusters: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(num_labels, num_negatives)
        if clusters.assign.numel() != self.num_labels:
            raise ValueError(f"clusters cover {clusters.assign.numel()} labels: expected "
                             f"num_labels={self.num_labels}")
        self.num_clusters = clusters.num_clusters
        self.topk = check_int("meta_topk", topk, 1, self.num_clusters)
        self.loss_weight = check_float("meta_loss_weight", loss_weight, 0.0, low_inclusive=False)
        self.seed = int(seed)
        self.add_positive_clusters = bool(add_positive_clusters)
        self.device = torch.device(device)
        self.clusters = LabelClusters(clusters.assign.to(self.device),
                                      clusters.members.to(self.device), clusters.seconds)
        self.head: nn.Linear | None = None
        if dim is not None:
            self._build_head(check_int("dim", dim, 1))
        self.setup_info: dict = {}
        # Meta-classifier quality since the last eval_stats(): recall of positive clusters in
        # the top-m, candidates per row (before trimming), the head's loss.
        self._stats = {"recall_sum": 0.0, "rows": 0, "cand_sum": 0.0, "cand_rows": 0, "loss_sum": 0.0, "steps": 0}
        self.last_recall: float | None = None

    # -- the head -------------------------------------------------------
    def _build_head(self, dim: int) -> nn.Linear:
        """The head ``[K, dim]``, initialised from the seed (not the global RNG)."""
        gen = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / math.sqrt(dim)
        head = nn.Linear(dim, self.num_clusters)
        with torch.no_grad():
            head.weight.copy_(torch.rand(head.weight.shape, generator=gen) * 2 * bound - bound)
            head.bias.zero_()
        self.head = head.to(self.device)
        return self.head

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        # Without a dim (a sampler used on its own), the head is built at the first batch.
        head = self.head if self.head is not None else self._build_head(int(emb.shape[1]))
        return head(emb)

    def trainable(self) -> list[nn.Parameter]:
        """The head's parameters (none before a head without a given ``dim`` is built)."""
        return [] if self.head is None else list(self.head.parameters())

    def memory_bytes(self) -> int:
        """The sampler's own memory: the clusters and the head (its Adam state not counted)."""
        return self.clusters.memory_bytes() + sum(p.numel() * p.element_size()
                                                  for p in self.trainable())

    def _cluster_targets(self, positives: Positives) -> tuple[torch.Tensor, torch.Tensor]:
        """The positives' clusters [B, P] and whether each is a real, first occurrence."""
        pos = positives_on(positives, self.device)
        pc = self.clusters.assign[pos.ids]
        return pc, first_occurrence(pc, pos.mask)

    def auxiliary_loss(self, emb: torch.Tensor, positives: Positives) -> torch.Tensor:
        """``loss_weight`` x the head's BCE on cluster targets, summed over clusters and
        averaged over rows (as the main loss is), with gradient to the head and the encoder."""
        logits = self._logits(emb)
        pc, first = self._cluster_targets(positives)
        target = torch.zeros(logits.shape[0], self.num_clusters + 1, device=logits.device)
        target.scatter_(1, torch.where(first, pc, self.num_clusters), 1.0)  # dump column K
        bce = F.binary_cross_entropy_with_logits(logits, target[:, :-1], reduction="sum")
        loss = self.loss_weight * bce / max(logits.shape[0], 1)
        self._stats["loss_sum"] += float(loss.detach())
        self._stats["steps"] += 1
        return loss

    # -- sampling -------------------------------------------------------
    @torch.no_grad()
    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Negatives:
        dev = emb.device
        B, R = emb.shape[0], self.num_negatives
        pos = positives_on(positives, dev)
        table, _ = sorted_positive_table(pos)
        top = torch.topk(self._logits(emb), self.topk, dim=1).indices         # [B, m]
        pc, first = self._cluster_targets(pos)
        self._record_recall(top, pc, first)
        if self.add_positive_clusters:
            cl = torch.cat([top, pc], 1)
            ok = first_occurrence(cl, torch.cat([torch.ones_like(top, dtype=torch.bool), first], 1))
        else:
            cl, ok = top, torch.ones_like(top, dtype=torch.bool)
        cand = self.clusters.members[cl]                                       # [B, C, S]
        in_set = (ok.unsqueeze(2) & (cand >= 0)).reshape(B, -1)
        cand = cand.reshape(B, -1).clamp_min(0)
        # Candidates are distinct (clusters partition the labels); the row's positives among
        # them are skipped, so the non-positive candidates number |set| - |positives in set|.
        cl_sorted, _ = torch.sort(torch.where(ok, cl, -1), dim=1)
        pos_in = is_member(torch.where(first, pc, -1), cl_sorted) & \
            first_occurrence(pos.ids, pos.mask)
        self._stats["cand_sum"] += float(in_set.sum() - pos_in.sum())
        self._stats["cand_rows"] += B
        # A uniform draw of R non-positive candidates: the set in random order (random keys,
        # -1 outside it), the first R + P entries, the first R of those that are not positives.
        keys = torch.rand(cand.shape, generator=generator, device=dev)
        keys = torch.where(in_set, keys, keys.new_full((), -1.0))
        kv, ki = torch.topk(keys, min(R + pos.ids.shape[1], cand.shape[1]), dim=1)
        ids = cand.gather(1, ki)
        ids, got = first_k_valid(ids, (kv >= 0) & ~is_member(ids, table), R)
        if bool(got.all()):
            mask = got
        else:  # slots the candidates could not fill: uniform negatives (a repeat is masked)
            uni, uni_ok = uniform_excluding(pos, self.num_labels, R, generator, dev, table=table)
            ids = torch.where(got, ids, uni)
            mask = first_occurrence(ids, got | uni_ok)
        source = torch.where(got, SOURCE_META, SOURCE_UNIFORM).to(torch.uint8)
        return Negatives(ids, mask, source)

    def _record_recall(self, top: torch.Tensor, pc: torch.Tensor, first: torch.Tensor) -> None:
        """Recall of each row's distinct positive clusters in its top-m (rows with positives)."""
        top_sorted, _ = torch.sort(top, dim=1)
        hit = is_member(pc, top_sorted) & first
        n = first.sum(1)
        has = n > 0
        if bool(has.any()):
            recall = hit.sum(1)[has].float() / n[has].float()
            self.last_recall = float(recall.mean())
            self._stats["recall_sum"] += float(recall.sum())
            self._stats["rows"] += int(has.sum())

    @torch.no_grad()
    def candidate_topk(self, emb: torch.Tensor, W: torch.Tensor, k: int,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
        """LightXML's prediction: the top-``k`` label ids [n, k] among the labels of each row's
        top-m clusters, ranked by ``w_j . emb (+ b_j) + log sigmoid(head_c(j)(emb))`` (label
        and cluster probabilities multiplied, on the label's logit).  Labels outside the
        row's clusters are not predicted (id -1 when fewer than ``k`` candidates)."""
        logits = self._logits(emb)
        top_v, top = torch.topk(logits, self.topk, dim=1)                    # [n, m]
        cand = self.clusters.members[top]                                     # [n, m, S]
        real = cand >= 0
        ids = cand.clamp_min(0)
        s = torch.einsum("nd,nmsd->nms", emb, W[ids])
        if bias is not None:
            s = s + bias[ids]
        s = s + F.logsigmoid(top_v).unsqueeze(2)
        s = torch.where(real, s, s.new_full((), -float("inf"))).flatten(1)
        kk = min(k, s.shape[1])
        v, i = torch.topk(s, kk, dim=1)
        out = torch.where(torch.isfinite(v), ids.flatten(1).gather(1, i), -1)
        if kk < k:
            out = torch.cat([out, out.new_full((out.shape[0], k - kk), -1)], 1)
        return out

    def eval_stats(self) -> dict:
        """Averages since the previous call (logged with each evaluation), then reset:
        ``meta_recall`` (share of a row's positive clusters in its top-m), ``meta_candidates``
        (non-positive candidate labels per row), ``meta_loss`` (the head's weighted BCE);
        ``meta_cluster_s``: the one-off cost of clustering the labels (seconds)."""
        s = self._stats
        out = {"meta_recall": s["recall_sum"] / s["rows"] if s["rows"] else None,
               "meta_candidates": s["cand_sum"] / s["cand_rows"] if s["cand_rows"] else None,
               "meta_loss": s["loss_sum"] / s["steps"] if s["steps"] else None,
               "meta_cluster_s": self.clusters.seconds}
        self._stats = {k: 0.0 if isinstance(v, float) else 0 for k, v in s.items()}
        return out

    # -- checkpointing --------------------------------------------------
    def state_dict(self) -> dict:
        state = super().state_dict()
        state.update(assign=self.clusters.assign.cpu(), cluster_seconds=self.clusters.seconds,
                     head=None if self.head is None else
                     {k: v.cpu() for k, v in self.head.state_dict().items()},
                     stats=dict(self._stats))
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if not torch.equal(state["assign"].to(self.device), self.clusters.assign):
            raise ValueError("the checkpoint's label clusters differ from this sampler's")
        if state.get("head") is not None:
            head = self.head if self.head is not None else \
                self._build_head(int(state["head"]["weight"].shape[1]))
            head.load_state_dict(state["head"])
        self._stats = dict(state.get("stats", self._stats))
