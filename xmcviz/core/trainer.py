"""Training loop: TrainConfig (validated up front), Trainer (steps, eval, checkpoints, hooks).

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

import math
import time
from typing import Any, Iterable

import numpy as np
import scipy.sparse as sp
import torch

from ..data.registry import DEFAULT_PROPENSITY
from ..hooks.base import Hook, RunInfo, StepContext
from .loss import model_loss
from .config import TrainConfig, resolve_device, sampler_names, steps_per_epoch
from .models import build_model
from .optim import RowSparseAdam  # re-exported: it used to live here
from .rundir import (JsonlWriter, RunDir, environment_info, load_checkpoint,
                     save_checkpoint)
from ..samplers.base import NegativeSampler, Positives

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "RowSparseAdam", "csr_to_torch",
           "resolve_device", "epoch_permutation", "sampler_names"]

CHECKPOINT_FORMAT = 1

# Settings that may differ between a run and its resumption: they do not change the trajectory.
_RUN_CONTROL = frozenset({"epochs", "out", "resume", "overwrite", "progress", "device",
                          "checkpoint_every_steps", "eval_every_steps", "eval_batch_size"})


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the epoch."""


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The row order of ``epoch``: a function of (seed, epoch) only, so a resumed run repeats it."""
    return np.random.default_rng((int(seed), int(epoch))).permutation(n)


def csr_to_torch(X: sp.csr_matrix, device: torch.device | str = "cpu") -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse CSR float32 tensor on ``device`` (no Python loop)."""
    X = sp.csr_matrix(X)
    crow = torch.from_numpy(X.indptr.astype(np.int64, copy=False))
    col = torch.from_numpy(X.indices.astype(np.int64, copy=False))
    val = torch.from_numpy(X.data.astype(np.float32, copy=False))
    # check_invariants=False: scipy already guarantees a valid CSR.  (torch's "beta" notice
    # is silenced once, in xmcviz.core.models.)
    return torch.sparse_csr_tensor(crow, col, val, size=X.shape, dtype=torch.float32,
                                   device=device, check_invariants=False)


def _propensity_from_meta(meta: dict) -> tuple[float | None, float | None]:
    meta = meta or {}
    p = meta.get("propensity")
    if isinstance(p, dict):
        return p.get("A", p.get("a")), p.get("B", p.get("b"))
    if isinstance(p, (list, tuple)) and len(p) == 2:
        return p[0], p[1]
    return (meta.get("propensity_a", meta.get("A")), meta.get("propensity_b", meta.get("B")))


class Trainer:
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
        self.config = config
        config.validate(custom_model=model is not None)
        self.device = resolve_device(config.device)
        self.dataset = dataset if dataset is not None else self._load_data(config)
        ds = self.dataset
        self.num_labels = int(ds.num_labels)
        self.num_train = int(ds.X_train.shape[0])
        if self.num_train < 1:
            raise ValueError("the dataset has no training rows")
        config.validate(self.num_labels, self.num_train, custom_model=model is not None)
        self.steps_per_epoch = steps_per_epoch(self.num_train, config.batch_size)
        self.hooks: list[Hook] = list(hooks)
        self._rng_devices = [self.device] if self.device.type == "cuda" else []

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
        self.run_dir = RunDir(config.out) if config.out is not None else None
        checkpoint = None
        if self.run_dir is not None:
            self.run_dir.check_free(config.resume, config.overwrite)
            if config.resume and self.run_dir.has_checkpoint():
                checkpoint = load_checkpoint(self.run_dir.checkpoint_path)
                self._check_same_settings(checkpoint)
        elif config.resume:
            raise ValueError("resume=True needs out= (the run directory to resume)")
        self.sampler = sampler if sampler is not None else self._build_sampler(
            state=None if checkpoint is None else checkpoint["sampler"])
        if self.sampler.num_labels != self.num_labels:
            raise ValueError(f"sampler has num_labels={self.sampler.num_labels}: expected "
                             f"{self.num_labels}")
        self.sampler.set_steps_per_epoch(self.steps_per_epoch)
        limit = getattr(self.sampler, "max_elements", None)  # the full loss: B x L per batch
        if limit is not None and config.batch_size * self.num_labels > limit:
            raise ValueError(f"batch_size={config.batch_size} is out of range for sampler "
                             f"{config.sampler!r} with L={self.num_labels}: allowed "
                             f"[1, {max(1, limit // self.num_labels)}]")
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)

        # Progress through training; restored from a checkpoint on resume.
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.time_s = 0.0
        self._loss_sum = 0.0
        self._loss_count = 0
        self.history: list[dict] = []
        self._torch_rng: torch.Tensor | None = None
        self._cuda_rng: torch.Tensor | None = None
        self.resume_step: int | None = None
        self._started = False
        self._metrics_writer: JsonlWriter | None = None

        if self.run_dir is not None and config.resume:
            self.resume_step = 0
            if checkpoint is not None:
                self._load_checkpoint(checkpoint)

    # ------------------------------------------------------------------ construction
    def _seed_global_rng(self) -> None:
        # Only the generators that fork_rng saves and restores: the CPU one and our device's.
        torch.default_generator.manual_seed(self.config.seed)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(self.config.seed)

    @staticmethod
    def _load_data(config: TrainConfig):
        from .. import data
        if config.data is not None:
            return data.resolve(config.data, seed=config.data_seed)
        if config.train is not None and config.test is not None:
            return data.load(train=config.train, test=config.test)
        raise ValueError("no data: give data= (a name, directory or file), train= and test=, "
                         "or a Dataset")

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
        from ..samplers import make_sampler
        c = self.config
        R = c.negatives if c.sampler != "full" else self.num_labels - 1
        return make_sampler(c.sampler, num_labels=self.num_labels, num_negatives=R,
                            label_freq=self.label_freq, mips_k=c.mips_k, clusters=c.clusters,
                            nprobe=c.nprobe, refresh_every=c.refresh_every,
                            refreshes_per_epoch=c.refreshes_per_epoch,
                            warmup_epochs=c.warmup_epochs, seed=c.seed,
                            dataset=self.dataset, device=self.device, state=state)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly where this one is."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": (torch.cuda.get_rng_state(self.device)
                         if self.device.type == "cuda" else None),
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "time_s": self.time_s,
            "loss_sum": self._loss_sum,
            "loss_count": self._loss_count,
            "metrics": list(self.history),
        }

    def _check_same_settings(self, ck: dict) -> None:
        """Refuse to resume a checkpoint whose run had other settings (run control aside)."""
        old = ck.get("config", {})
        mine = self.config.to_dict()
        diff = sorted(k for k in mine if k not in _RUN_CONTROL and k in old and old[k] != mine[k])
        if diff:
            desc = ", ".join(f"{k}={mine[k]!r} (checkpoint: {old[k]!r})" for k in diff)
            raise ValueError(f"resume: settings differ from the checkpointed run: {desc}")

    def _load_checkpoint(self, ck: dict) -> None:
        """Restore everything from a checkpoint already checked by :meth:`_check_same_settings`."""
        self.model.load_state_dict(ck["model"])
        for opt, st in zip(self.optimizers, ck["optimizers"], strict=True):
            opt.load_state_dict(st)
        self.sampler.load_state_dict(ck["sampler"])
        self.generator.set_state(ck["generator"])
        self._torch_rng = ck["torch_rng"]
        self._cuda_rng = ck.get("cuda_rng") if self.device.type == "cuda" else None
        self.epoch, self.batch_in_epoch = int(ck["epoch"]), int(ck["batch_in_epoch"])
        self.step = int(ck["step"])
        self.time_s = float(ck["time_s"])
        self._loss_sum, self._loss_count = float(ck["loss_sum"]), int(ck["loss_count"])
        self.history = list(ck["metrics"])
        self.resume_step = self.step

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` atomically (no-op without a run directory)."""
        if self.run_dir is not None:
            save_checkpoint(self.run_dir.checkpoint_path, self.state_dict())

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Metrics of the current model on the test split (top-k streamed, never N x L).

        With a sampler that provides ``log_pn_all`` (``adversarial``) the metrics rank by
        ``score + log p_n(y|x)`` (bias removal, one [rows, L] block at a time) and the same
        metrics of the plain scores are added with a ``_raw`` suffix (e.g. ``P@1_raw``).
        """
        from ..samplers.adversarial.bias import find_log_pn_all, raw_and_debiased_topk
        from .evaluate import evaluate, predict_topk
        ds, c = self.dataset, self.config
        was_training = self.model.training
        self.model.eval()
        X = sp.csr_matrix(ds.X_test)
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
        raw = evaluate(topk, ds.Y_test, ks=tuple(c.eval_ks), inv_propensity=self.inv_propensity)
        if log_pn_all is None:
            return raw
        adj = evaluate(topk_adj, ds.Y_test, ks=tuple(c.eval_ks), inv_propensity=self.inv_propensity)
        return {**adj, **{f"{k}_raw": v for k, v in raw.items()}}

    def _eval_and_log(self) -> dict:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        record = {
            "epoch": round(self.step / self.steps_per_epoch, 6),
            "step": self.step,
            "time_s": self.time_s,
            "loss": self._loss_sum / self._loss_count if self._loss_count else None,
            **metrics,
            "eval_s": time.perf_counter() - t0,
        }
        self._loss_sum, self._loss_count = 0.0, 0
        self.history.append(record)
        if self._metrics_writer is not None:
            self._metrics_writer.write(record)
        self._call_hooks("on_eval", dict(record))
        return record

    # ------------------------------------------------------------------ hooks
    def _call_hooks(self, moment: str, arg: Any, hooks: list[Hook] | None = None) -> None:
        """Call ``moment`` on ``hooks`` (default: all of them)."""
        hooks = self.hooks if hooks is None else hooks
        if not hooks:
            return
        # A forked RNG: a hook drawing random numbers cannot shift dropout or the sampler.
        with torch.random.fork_rng(devices=self._rng_devices):
            for h in hooks:
                getattr(h, moment)(arg)

    def run_info(self) -> RunInfo:
        return RunInfo(run_dir=None if self.run_dir is None else self.run_dir.path,
                       config=self.config.to_dict(), num_labels=self.num_labels,
                       num_features=int(self.dataset.num_features),
                       steps_per_epoch=self.steps_per_epoch, device=self.device,
                       dataset=self.dataset, resume_step=self.resume_step)

    # ------------------------------------------------------------------ training
    def train(self) -> dict:
        """Train to ``config.epochs``; returns the last evaluation record (metrics.jsonl's)."""
        if self._started:
            raise RuntimeError("train() was already called on this Trainer: build a new one")
        self._started = True
        with torch.random.fork_rng(devices=self._rng_devices):
            if self._torch_rng is not None:
                torch.set_rng_state(self._torch_rng)
                if self._cuda_rng is not None:
                    torch.cuda.set_rng_state(self._cuda_rng, self.device)
            else:
                self._seed_global_rng()
            try:
                self._open_run_dir()
                self._call_hooks("on_train_start", self.run_info())
                self._loop()
            finally:
                if self._metrics_writer is not None:
                    self._metrics_writer.close()
                self._close_hooks()
        return dict(self.history[-1]) if self.history else {}

    def _open_run_dir(self) -> None:
        if self.run_dir is None:
            return
        c = self.config
        self.run_dir.prepare(resume=c.resume, overwrite=c.overwrite)
        if self.resume_step is not None:
            self.run_dir.truncate_metrics(self.resume_step)
        self.run_dir.write_config({
            **c.to_dict(),
            "resolved": {"device": str(self.device), "propensity_a": self.propensity[0],
                         "propensity_b": self.propensity[1], "num_labels": self.num_labels,
                         "num_features": int(self.dataset.num_features),
                         "train_rows": self.num_train,
                         "test_rows": int(self.dataset.X_test.shape[0]),
                         "steps_per_epoch": self.steps_per_epoch,
                         "dim": int(self.model.W.shape[1]), "resumed_from_step": self.resume_step,
                         "dataset": getattr(self.dataset, "name", None)},
            "environment": environment_info(self.device),
        })
        self._metrics_writer = self.run_dir.metrics_writer()

    def _close_hooks(self) -> None:
        errors = []
        for h in self.hooks:
            try:
                h.close()
            except Exception as e:  # close the others anyway; report the first failure
                errors.append(e)
        if errors:
            raise errors[0]

    def _loop(self) -> None:
        from tqdm.auto import tqdm
        c, ds = self.config, self.dataset
        X, Y = sp.csr_matrix(ds.X_train), sp.csr_matrix(ds.Y_train)
        spe, B = self.steps_per_epoch, c.batch_size
        self.model.train()
        while self.epoch < c.epochs:
            epoch = self.epoch
            perm = epoch_permutation(c.seed, epoch, self.num_train)
            bar = tqdm(total=spe, initial=self.batch_in_epoch, disable=not c.progress,
                       desc=f"epoch {epoch + 1}/{c.epochs}", unit="step", leave=True)
            try:
                while self.epoch == epoch and self.batch_in_epoch < spe:
                    rows = perm[self.batch_in_epoch * B:(self.batch_in_epoch + 1) * B]
                    loss = self._train_step(X, Y, rows)
                    bar.update(1)
                    end_of_epoch = self.batch_in_epoch == spe
                    if self.step % 20 == 0 or end_of_epoch:
                        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    if end_of_epoch:
                        self.epoch, self.batch_in_epoch = epoch + 1, 0
                    if end_of_epoch or (c.eval_every_steps and self.step % c.eval_every_steps == 0):
                        self._eval_and_log()
                    if end_of_epoch or (c.checkpoint_every_steps
                                        and self.step % c.checkpoint_every_steps == 0):
                        self.save_checkpoint()
            finally:
                bar.close()

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
        if not math.isfinite(loss):
            where = "" if self.run_dir is None else \
                f"; the evaluations logged so far are in {self.run_dir.metrics_path}"
            raise TrainingDiverged(f"training diverged: loss={loss} at step {step} (epoch "
                                   f"{epoch}, batch {in_epoch} of the epoch){where}")

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
        out.loss.backward()
        for opt in self.optimizers:
            opt.step()
        if ctx is not None:
            t_hooks = time.perf_counter()
            self._call_hooks("after_update", ctx, due)
            t0 += time.perf_counter() - t_hooks

        self.step += 1
        self.batch_in_epoch += 1
        self._loss_sum += loss
        self._loss_count += 1
        self.time_s += time.perf_counter() - t0
        return loss
