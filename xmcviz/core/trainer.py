"""Multi-label training with sampled negatives: Trainer (model, sampler, BCE step, evaluation).

The loop around the step (batches, evaluation schedule and logging, run directory, checkpoints,
hooks) is :class:`~xmcviz.core.loop.TrainingLoop`, shared with the first-label softmax setting.

One step::

    emb = model.embed(x)                                   # [B, d]
    if sampler.refresh_due(step, epoch): sampler.refresh(W.detach(), step, epoch)
    neg = sampler.sample(emb.detach(), pos, epoch=..., generator=gen, W=..., bias=..., rows=...)
    loss = BCE(positives, negatives)                       # xmcviz.core.loss
    hooks.before_update(ctx); backward; optimisers step; hooks.after_update(ctx)

Label rows get sparse gradients and SparseAdam (:class:`RowSparseAdam`, a faster step of
``torch.optim.SparseAdam``) moves only the rows in the loss (O(B (P + R) d) per step,
independent of L); the encoder uses Adam.  ``sparse_updates=False``
trains everything with one dense Adam instead (a different algorithm, O(L d) per step).

Reproducibility: the epoch permutation comes from ``numpy.random.default_rng((seed, epoch))``,
the sampler draws from a ``torch.Generator`` seeded with ``seed``, dropout from the global torch
RNG seeded with ``seed`` (forked, so the caller's RNG is left alone, and restored from
checkpoints).  Hooks run under a forked RNG too, so they cannot change the trajectory.  On CPU
two runs with the same config give identical metrics, and a resumed run ends where the
uninterrupted one does.
"""
from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import scipy.sparse as sp
import torch

from ..data.registry import DEFAULT_PROPENSITY
from ..data.hide import hide_positives
from ..hooks.base import Hook, StepContext
from .loss import model_loss
from .config import TrainConfig, resolve_device, steps_per_epoch
from .models import build_model, csr_tensor
from .optim import RowSparseAdam
# TrainingDiverged and epoch_permutation are re-exported (part of this module's API).
from .loop import TrainingDiverged, TrainingLoop, epoch_permutation
from ..samplers.base import NegativeSampler, Positives

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "csr_to_torch",
           "resolve_device", "epoch_permutation"]

def csr_to_torch(X: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR float32 tensor on ``device`` (no Python loop)."""
    X = sp.csr_matrix(X)
    crow = torch.from_numpy(X.indptr.astype(np.int64, copy=False))
    col = torch.from_numpy(X.indices.astype(np.int64, copy=False))
    val = torch.from_numpy(X.data.astype(np.float32, copy=False))
    # check_invariants=False: scipy already guarantees a valid CSR.
    return csr_tensor(crow, col, val, X.shape, dtype=torch.float32, device=device,
                      check_invariants=False)


def _propensity_from_meta(meta: dict) -> tuple[float | None, float | None]:
    meta = meta or {}
    p = meta.get("propensity")
    if isinstance(p, dict):
        return p.get("A", p.get("a")), p.get("B", p.get("b"))
    if isinstance(p, (list, tuple)) and len(p) == 2:
        return p[0], p[1]
    return (meta.get("propensity_a", meta.get("A")), meta.get("propensity_b", meta.get("B")))


class Trainer(TrainingLoop):
    """Train a model with sampled negatives; evaluate, checkpoint and call hooks.

    ``Trainer(config, dataset=None, hooks=(), model=None, sampler=None)``: everything is built
    and validated here, before any training (``ValueError`` on a bad setting, naming the value
    and the allowed range; a non-empty ``out`` without ``resume`` / ``overwrite`` is refused).
    ``dataset`` defaults to the one ``config`` names; ``model`` to ``build_model(config.model,
    ...)`` (any :class:`~xmcviz.core.models.XMCModel`, with a custom encoder, may be given);
    ``sampler`` to ``make_sampler(config.sampler, ...)``.  :meth:`train` runs the loop and
    returns the last evaluation record.
    """

    def __init__(self, config: TrainConfig, dataset: Any = None, hooks: Iterable[Hook] = (),
                 model: torch.nn.Module | None = None,
                 sampler: NegativeSampler | None = None) -> None:
        config.validate(custom_model=model is not None)
        self._setup(config, dataset, hooks)
        if config.hide_labels > 0:  # before anything reads the labels: hidden ones are never seen
            self.dataset = hide_positives(self.dataset, config.hide_labels, seed=config.data_seed)
        ds = self.dataset
        self.num_labels = int(ds.num_labels)
        self.num_train = int(ds.X_train.shape[0])
        if self.num_train < 1:
            raise ValueError("the dataset has no training rows")
        config.validate(self.num_labels, self.num_train, custom_model=model is not None)
        self.steps_per_epoch = steps_per_epoch(self.num_train, config.batch_size)

        # Label statistics once: frequencies for the samplers, propensities for PSP@k.
        self.label_freq = np.bincount(sp.csr_matrix(ds.Y_train).indices,
                                      minlength=self.num_labels).astype(np.float64)
        a, b = _propensity_from_meta(getattr(ds, "meta", {}))
        self.propensity = (float(config.propensity_a if config.propensity_a is not None
                                 else a if a is not None else DEFAULT_PROPENSITY[0]),
                           float(config.propensity_b if config.propensity_b is not None
                                 else b if b is not None else DEFAULT_PROPENSITY[1]))
        from .evaluate import inv_propensity
        self.inv_propensity = inv_propensity(ds.Y_train, *self.propensity)

        # Model (initialised from the seed, without touching the caller's RNG).
        if model is None:
            with torch.random.fork_rng(devices=self._rng_devices):
                self._seed_global_rng()
                model = build_model(config.model, ds.num_features, self.num_labels,
                                    hidden=config.hidden, dropout=config.dropout,
                                    label_bias=config.label_bias,
                                    sparse_grad=config.sparse_updates)
        if getattr(model, "W", None) is None or tuple(model.W.shape)[0] != self.num_labels:
            raise ValueError(f"model.W must be [num_labels={self.num_labels}, d]")
        if hasattr(model, "sparse_grad"):
            model.sparse_grad = bool(config.sparse_updates)
        elif config.sparse_updates:
            raise ValueError("sparse_updates=True needs a model with sparse label gradients "
                             "(an XMCModel); pass sparse_updates=False")
        self.model = model.to(self.device)
        self.optimizers = self._build_optimizers()

        # The run directory and the checkpoint before the sampler: a wrong out fails before any
        # work, and a resumed run rebuilds a fitted sampler (adversarial: PCA + tree) from the
        # checkpoint instead of refitting it (_load_checkpoint restores every state below).
        checkpoint = self._open_checkpoint()
        self.sampler = sampler if sampler is not None else self._build_sampler(
            state=None if checkpoint is None else checkpoint["sampler"])
        if self.sampler.num_labels != self.num_labels:
            raise ValueError(f"sampler has num_labels={self.sampler.num_labels}: expected "
                             f"{self.num_labels}")
        self.sampler.set_steps_per_epoch(self.steps_per_epoch)
        # A sampler's own trainable part (meta: its cluster head) trains with the model's lr.
        own = getattr(self.sampler, "trainable", list)()
        if own:
            self.optimizers.append(torch.optim.Adam(own, lr=config.lr))
        limit = getattr(self.sampler, "max_elements", None)  # the full loss: B x L per batch
        if limit is not None and config.batch_size * self.num_labels > limit:
            raise ValueError(f"batch_size={config.batch_size} is out of range for sampler "
                             f"{config.sampler!r} with L={self.num_labels}: allowed "
                             f"[1, {max(1, limit // self.num_labels)}] (B*L <= {limit}: the "
                             f"int32 index range, or less when {self.device}'s free memory "
                             f"is short)")
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)

    # ------------------------------------------------------------------ construction
    def _build_optimizers(self) -> list[torch.optim.Optimizer]:
        lr = self.config.lr
        if not self.config.sparse_updates:
            return [torch.optim.Adam(self.model.parameters(), lr=lr)]
        label = [self.model.W] + ([self.model.bias] if getattr(self.model, "bias", None)
                                  is not None else [])
        ids = {id(p) for p in label}
        dense = [p for p in self.model.parameters() if id(p) not in ids and p.requires_grad]
        opts: list[torch.optim.Optimizer] = [RowSparseAdam(label, lr=lr)]
        if dense:
            opts.append(torch.optim.Adam(dense, lr=lr))
        return opts

    def _build_sampler(self, state: dict | None = None) -> NegativeSampler:
        """The configured sampler; ``state``: a checkpoint's sampler state (no refit)."""
        from ..samplers import SamplerEnv, build_sampler
        return build_sampler(self.config, SamplerEnv(self.num_labels, self.label_freq,
                                                     self.dataset, self.device, state,
                                                     dim=int(self.model.W.shape[1])))

    # ------------------------------------------------------------------ checkpoints
    def _algorithm_state(self) -> dict:
        return {"model": self.model.state_dict(),
                "optimizers": [o.state_dict() for o in self.optimizers],
                "sampler": self.sampler.state_dict()}

    def _load_algorithm_state(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])
        for opt, st in zip(self.optimizers, ck["optimizers"], strict=True):
            opt.load_state_dict(st)
        self.sampler.load_state_dict(ck["sampler"])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, rows: int | None = None) -> dict[str, float]:
        """Metrics of the current model on the test split (top-k streamed, never N x L).

        ``rows``: evaluate on :meth:`eval_subsample` ``(rows)`` only (None: every test row).

        With a sampler that provides ``log_pn_all`` (``adversarial``) the metrics rank by
        ``score + log p_n(y|x)`` (bias removal, one [rows, L] block at a time) and the same
        metrics of the plain scores are added with a ``_raw`` suffix (e.g. ``P@1_raw``).
        """
        from ..samplers.adversarial.bias import find_log_pn_all, raw_and_debiased_topk
        from .evaluate import evaluate, predict_topk
        ds, c = self.dataset, self.config
        was_training = self.model.training
        self.model.eval()
        X, Y = sp.csr_matrix(ds.X_test), ds.Y_test
        if rows is not None and rows < X.shape[0]:
            keep = self.eval_subsample(rows)
            X, Y = X[keep], sp.csr_matrix(Y)[keep]
        dim = int(self.model.W.shape[1])
        # Dense [rows, d] embeddings per batch: bound their size for wide (linear) models.
        rows = max(1, min(c.eval_batch_size, (1 << 25) // max(dim, 1)))
        kmax = max(c.eval_ks)

        def embed(Xb: sp.csr_matrix) -> torch.Tensor:
            return self.model.embed(csr_to_torch(Xb, self.device))

        try:
            W = self.model.W.detach()
            bias = self.model.bias.detach() if getattr(self.model, "bias", None) is not None \
                else None
            log_pn_all = find_log_pn_all(self.sampler)
            if log_pn_all is None:
                topk = predict_topk((embed(X[s:s + rows]) for s in range(0, X.shape[0], rows)),
                                    W, kmax, bias=bias, row_batch=rows)
            else:  # one pass: each block embedded once for the plain and the debiased top-k
                topk, topk_adj = raw_and_debiased_topk(embed, X, W, log_pn_all, kmax, bias=bias,
                                                       row_batch=rows)
        finally:
            self.model.train(was_training)
        raw = evaluate(topk, Y, ks=tuple(c.eval_ks), inv_propensity=self.inv_propensity)
        if log_pn_all is None:
            return raw
        adj = evaluate(topk_adj, Y, ks=tuple(c.eval_ks), inv_propensity=self.inv_propensity)
        return {**adj, **{f"{k}_raw": v for k, v in raw.items()}}

    def eval_subsample(self, rows: int) -> np.ndarray:
        """Sorted test-row ids of the fixed evaluation subsample of ``rows`` rows: a function of
        (seed, number of test rows, rows) only, so every evaluation and a resumed run use the
        same rows."""
        n = int(self.dataset.X_test.shape[0])
        rng = np.random.default_rng((int(self.config.seed), n, int(rows), 0xE7A1))
        return np.sort(rng.choice(n, size=min(int(rows), n), replace=False))

    def _logged_metrics(self, final: bool) -> dict:
        """The metrics of an evaluation record: on every test row when ``final``, otherwise on
        ``eval_rows`` of them when set; ``eval_rows`` says how many."""
        n_test = int(self.dataset.X_test.shape[0])
        rows = None if final or self.config.eval_rows is None else min(self.config.eval_rows, n_test)
        return {**self.evaluate(rows), "eval_rows": n_test if rows is None else rows}

    # ------------------------------------------------------------------ training
    def _resolved(self) -> dict:
        return {"device": str(self.device), "propensity_a": self.propensity[0],
                "propensity_b": self.propensity[1], "num_labels": self.num_labels,
                "num_features": int(self.dataset.num_features),
                "train_rows": self.num_train,
                "test_rows": int(self.dataset.X_test.shape[0]),
                "steps_per_epoch": self.steps_per_epoch,
                "dim": int(self.model.W.shape[1]), "resumed_from_step": self.resume_step,
                "sampler_setup": getattr(self.sampler, "setup_info", None),
                "dataset": getattr(self.dataset, "name", None)}

    def _record_extra(self) -> dict:
        # meta: the head's recall and loss since the last evaluation.
        return getattr(self.sampler, "eval_stats", dict)()

    def _start_loop(self) -> None:
        ds = self.dataset
        self._X_train, self._Y_train = sp.csr_matrix(ds.X_train), sp.csr_matrix(ds.Y_train)
        self.model.train()

    def _step(self, rows: np.ndarray) -> float:
        return self._train_step(self._X_train, self._Y_train, rows)

    def _train_step(self, X: sp.csr_matrix, Y: sp.csr_matrix, rows: np.ndarray) -> float:
        c, dev = self.config, self.device
        t0 = time.perf_counter()
        step, epoch, in_epoch = self.step, self.epoch, self.batch_in_epoch
        x = csr_to_torch(X[rows], dev)
        pos = Positives.from_csr(Y, rows, device=dev)
        rows_t = torch.as_tensor(rows, dtype=torch.int64, device=dev)

        emb = self.model.embed(x)
        W = self.model.W.detach()
        bias = self.model.bias.detach() if getattr(self.model, "bias", None) is not None else None
        if self.sampler.refresh_due(step, epoch):
            # Without a bias, the plain call: samplers written without the keyword still work.
            info = (self.sampler.refresh(W, step, epoch) if bias is None
                    else self.sampler.refresh(W, step, epoch, bias=bias))
            self._call_hooks("on_refresh", {"step": step, "epoch": epoch, **(info or {})})
        neg = self.sampler.sample(emb.detach(), pos, epoch=epoch, generator=self.generator,
                                  W=W, bias=bias, rows=rows_t)
        out = model_loss(self.model, emb, pos, neg, c.eta_ratio)
        loss = float(out.loss.detach())
        self._check_finite(loss)
        aux_loss = getattr(self.sampler, "auxiliary_loss", None)  # meta: its head's loss
        aux = None if aux_loss is None else aux_loss(emb, pos)
        total = out.loss if aux is None else out.loss + aux

        ctx = None
        due = [h for h in self.hooks if h.wants(step)]
        if due:
            ctx = StepContext(step=step, epoch=epoch, step_in_epoch=in_epoch, rows=rows_t,
                              emb=emb.detach(), positives=pos, negatives=neg,
                              pos_scores=out.pos_scores.detach(),
                              neg_scores=out.neg_scores.detach(), loss=loss, model=self.model,
                              sampler=self.sampler, eta_ratio=c.eta_ratio,
                              steps_since_refresh=self.sampler.steps_since_refresh(step),
                              refresh_interval=self.sampler.refresh_interval())
            t_hooks = time.perf_counter()
            self._call_hooks("before_update", ctx, due)
            t0 += time.perf_counter() - t_hooks  # hook time is not training time

        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in self.optimizers:
            opt.step()
        if ctx is not None:
            t_hooks = time.perf_counter()
            self._call_hooks("after_update", ctx, due)
            t0 += time.perf_counter() - t_hooks

        self._advance(loss, time.perf_counter() - t0)
        return loss
