"""Adversarial negative sampling (Bamler & Mandt, ICLR 2020; docs/background.md, section
"Adversarial tree sampler").

Negatives are drawn from an auxiliary model p_n(y|x) that is fitted once,
before training, on the training data: a PCA of the inputs to k dims and a
balanced binary label tree with a logistic regression at every internal node
(:mod:`xmcviz.samplers.adversarial.tree` documents the model and its greedy top-down
fit).  Draws are ancestral, O(k log L) each.  Because p_n imitates the data
distribution, the negatives are hard ones, and the main model only has to
learn the correction to p_n: at prediction the unbiased score is
``xi_y(x) + log p_n(y|x)``, so each negative carries ``log_q = log p_n(y|x)``
and :meth:`AdversarialSampler.log_pn` / :meth:`AdversarialSampler.log_pn_all`
give the same term for any (test) rows.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from .pca import SparsePCA
from .tree import PAIRS, LabelTree, fit_label_tree, training_pairs
from ...validation import check_choice, check_float, check_int
from ..base import SOURCE_ADVERSARIAL, NegativeSampler, Negatives, Positives, SamplerEnv
from ..ops import first_occurrence, positives_on

if TYPE_CHECKING:
    from ...core.config import TrainConfig


class AdversarialSampler(NegativeSampler):
    """Draws ``num_negatives`` labels per row from the fitted tree p_n(.|x_row).

    ``z`` of every training row is computed once and kept on ``device``
    (N x k float32); ``sample`` needs the batch's dataset row ids (``rows=``).
    Draws equal to a positive of the row, and repeats of an earlier draw in
    the same row, get ``mask`` False (they stay valid label ids).
    """

    name = "adversarial"
    needs_model = False

    @classmethod
    def from_config(cls, config: "TrainConfig", env: SamplerEnv) -> "AdversarialSampler":
        """Fit PCA + label tree on ``env.dataset`` (seeded by ``config.seed``), or rebuild them
        from ``env.state`` when resuming (no refit)."""
        if env.dataset is None:
            raise ValueError("sampler 'adversarial' needs dataset= (its X_train, Y_train fit the tree p_n)")
        if env.state is not None:
            return cls.from_state_dict(env.state, env.dataset.X_train, device=env.device)
        return fit_adversarial_sampler(env.dataset.X_train, env.dataset.Y_train, config.negatives,
                                       seed=config.seed, device=env.device)

    def __init__(self, tree: LabelTree, pca: SparsePCA, X_train: sp.spmatrix | np.ndarray,
                 num_negatives: int, *, device: torch.device | str = "cpu",
                 fit_info: dict | None = None, z_train: torch.Tensor | None = None) -> None:
        super().__init__(tree.num_labels, num_negatives)
        if pca.k != tree.k:
            raise ValueError(f"PCA has k={pca.k} dims but the tree was fitted on k={tree.k}")
        if X_train.shape[1] != pca.num_features:
            raise ValueError(f"X_train has {X_train.shape[1]} features, the PCA expects {pca.num_features}")
        self.device = torch.device(device)
        self.tree = tree.to(self.device)
        self.pca = pca
        self.X_train = X_train
        # z_train may be handed in by the factory, which has just computed it.
        self.z_train = (pca.transform_torch(X_train, self.device) if z_train is None
                        else z_train.to(self.device, torch.float32))
        if self.z_train.shape != (X_train.shape[0], pca.k):
            raise ValueError(f"z_train has shape {tuple(self.z_train.shape)}, expected {(X_train.shape[0], pca.k)}")
        self.fit_info = dict(fit_info or {})

    @property
    def num_rows(self) -> int:
        return int(self.z_train.shape[0])

    def to(self, device: torch.device | str) -> "AdversarialSampler":
        """Move the tree and the training projections to ``device`` (in place)."""
        device = torch.device(device)
        if device != self.device:
            self.device, self.tree, self.z_train = device, self.tree.to(device), self.z_train.to(device)
        return self

    # -- sampling -------------------------------------------------------
    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | np.ndarray | None = None) -> Negatives:
        """R negatives per row from p_n(.|x_rows); ``log_q`` = log p_n of each.

        ``rows`` (int [B]) are the dataset row ids of the batch and are
        required.  The sampler moves itself (once) to ``emb.device``, where the
        trainer's ``generator`` lives, and samples there.
        """
        if rows is None:
            raise ValueError("AdversarialSampler.sample needs rows= (the batch's dataset row ids into "
                             "X_train): p_n(y|x) depends on the raw input, not on the embedding")
        self.to(emb.device)
        rows = torch.as_tensor(rows, dtype=torch.int64).to(self.device).reshape(-1)
        B = emb.shape[0]
        if rows.shape[0] != B:
            raise ValueError(f"rows has {rows.shape[0]} entries but the batch has {B} rows")
        ids, log_q = self.tree.sample(self.z_train[rows], self.num_negatives, generator=generator)
        pos = positives_on(positives, self.device)
        is_pos = ((ids[:, :, None] == pos.ids[:, None, :]) & pos.mask[:, None, :]).any(2)
        mask = first_occurrence(ids, ~is_pos)
        source = torch.full(ids.shape, SOURCE_ADVERSARIAL, dtype=torch.uint8, device=self.device)
        return Negatives(ids, mask, source, log_q)

    # -- bias removal -----------------------------------------------------
    def project(self, X: sp.spmatrix | np.ndarray | torch.Tensor) -> torch.Tensor:
        """``z`` [n, k] (float32, on the sampler's device) of some rows.

        A scipy matrix, a numpy array or a torch *sparse* tensor holds features
        ([n, D]) and is projected with the PCA; a dense torch tensor is taken
        to be ``z`` already and must have k columns."""
        if isinstance(X, torch.Tensor) and X.layout == torch.strided:
            if X.ndim != 2 or X.shape[1] != self.pca.k:
                raise ValueError(f"a dense tensor is taken as z and must be [n, k={self.pca.k}], "
                                 f"got shape {tuple(X.shape)}; pass features as scipy/numpy")
            return X.to(self.device, torch.float32)
        if isinstance(X, torch.Tensor):
            X = X.to_dense().cpu().numpy()
        return self.pca.transform_torch(X, self.device)

    def log_pn(self, X: sp.spmatrix | np.ndarray | torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p_n(y|x) [n, K] of ``labels`` (int [n, K]) for rows ``X`` (features or z)."""
        z = self.project(X)
        labels = torch.as_tensor(labels, dtype=torch.int64, device=self.device)
        if labels.ndim != 2 or labels.shape[0] != z.shape[0]:
            raise ValueError(f"labels must be [n={z.shape[0]}, K], got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_labels):
            raise ValueError(f"labels out of range: allowed [0, {self.num_labels - 1}]")
        return self.tree.log_prob(z, labels)

    def log_pn_all(self, X: sp.spmatrix | np.ndarray | torch.Tensor) -> torch.Tensor:
        """log p_n(y|x) of every label, [n, L] (chunk the rows when L is large)."""
        return self.tree.log_prob_all(self.project(X))

    # -- checkpoints ------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "tree": self.tree.state_dict(), "pca": self.pca.state_dict(),
                "num_negatives": self.num_negatives, "fit_info": self.fit_info}

    def load_state_dict(self, state: dict) -> None:
        """Replace tree and PCA with the checkpoint's; the training projections are recomputed
        unless the checkpoint's PCA is the one the sampler already has (e.g. a sampler built
        by :meth:`from_state_dict` from the same checkpoint)."""
        super().load_state_dict(state)
        tree = LabelTree.from_state_dict(state["tree"], self.device)
        pca = SparsePCA.from_state_dict(state["pca"])
        if tree.num_labels != self.num_labels:
            raise ValueError(f"checkpoint tree has {tree.num_labels} labels, the sampler {self.num_labels}")
        if pca.num_features != self.X_train.shape[1]:
            raise ValueError(f"checkpoint PCA expects {pca.num_features} features, X_train has "
                             f"{self.X_train.shape[1]}")
        if not _same_projection(pca, self.pca):  # z depends on the PCA and X_train only
            self.z_train = pca.transform_torch(self.X_train, self.device)
        self.tree, self.pca = tree, pca
        self.fit_info = dict(state.get("fit_info", {}))

    @classmethod
    def from_state_dict(cls, state: dict, X_train: sp.spmatrix | np.ndarray, *,
                        device: torch.device | str = "cpu") -> "AdversarialSampler":
        """Rebuild a sampler from :meth:`state_dict` without refitting."""
        s = cls(LabelTree.from_state_dict(state["tree"], device), SparsePCA.from_state_dict(state["pca"]),
                X_train, int(state["num_negatives"]), device=device, fit_info=state.get("fit_info"))
        NegativeSampler.load_state_dict(s, state)
        return s


def _same_projection(a: SparsePCA, b: SparsePCA) -> bool:
    """Whether two PCAs project every input to the same z (same components and offset)."""
    return (a.components.shape == b.components.shape and np.array_equal(a.components, b.components)
            and np.array_equal(a.offset, b.offset))


def fit_adversarial_sampler(X_train: sp.spmatrix | np.ndarray, Y_train: sp.spmatrix, num_negatives: int, *,
                            k: int = 16, pairs: str = "all", lambda_n: float = 0.1, max_rounds: int = 20,
                            newton_steps: int = 1, logit_clip: float = 20.0, seed: int = 0,
                            device: torch.device | str = "cpu") -> AdversarialSampler:
    """Fit PCA (k dims, ``seed``) and the label tree on the training data; return the sampler.

    ``pairs``: ``"all"`` trains the tree on every (row, positive label) pair,
    ``"first"`` on each row's first label (the paper's softmax reduction).
    ``lambda_n``: L2 weight of the node regressions (> 0).  ``max_rounds``:
    cap on Newton/re-split alternations per level.  The tree is fitted on
    ``device`` (float64).
    """
    if X_train.ndim != 2 or Y_train.ndim != 2:
        raise ValueError("X_train and Y_train must be 2-D matrices")
    if X_train.shape[0] != Y_train.shape[0]:
        raise ValueError(f"X_train has {X_train.shape[0]} rows but Y_train has {Y_train.shape[0]}")
    N, D = X_train.shape
    L = Y_train.shape[1]
    check_int("num_labels", L, 2)
    check_int("num_negatives", num_negatives, 1, L - 1)
    check_int("k", k, 1, min(N, D))
    check_choice("pairs", pairs, PAIRS)
    check_float("lambda_n", lambda_n, 0.0, low_inclusive=False)
    check_int("max_rounds", max_rounds, 1, 1000)
    check_int("newton_steps", newton_steps, 1, 1000)
    check_float("logit_clip", logit_clip, 0.0, low_inclusive=False)
    check_int("seed", seed, 0)
    device = torch.device(device)

    t0 = time.perf_counter()
    pca = SparsePCA.fit(X_train, k, seed=seed)
    pca_s = time.perf_counter() - t0
    z = pca.transform_torch(X_train, device)
    rows, labels = training_pairs(sp.csr_matrix(Y_train), pairs)
    tree = fit_label_tree(z, rows, labels, L, lambda_n=lambda_n, max_rounds=max_rounds,
                          newton_steps=newton_steps, logit_clip=logit_clip)
    info = {"pca_s": pca_s, "tree": tree.info, "k": k, "pairs": pairs, "seed": seed,
            "num_pairs": int(rows.shape[0]), "total_s": time.perf_counter() - t0}
    return AdversarialSampler(tree, pca, X_train, num_negatives, device=device, fit_info=info, z_train=z)
