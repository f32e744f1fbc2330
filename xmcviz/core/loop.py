"""The training loop both settings share: data, device, batches, evaluation and logging, the run
directory, checkpoints, hooks and live publishing.

A setting subclasses :class:`TrainingLoop` and writes only its algorithm:

* ``_step(rows)``: one optimisation step on the dataset rows ``rows``; it times itself (hook
  time is not training time), checks the loss with :meth:`_check_finite` and ends with
  :meth:`_advance`;
* ``evaluate()``: the metrics of the current parameters (one evaluation record);
* ``_resolved()``: what ``config.json`` records besides the settings (sizes, device...);
* resumable settings: ``_algorithm_state()`` / ``_load_algorithm_state(ck)``, the parameters,
  optimiser and sampler states of a checkpoint (the loop adds its own progress and RNGs).

The loop, each epoch: the row order :func:`epoch_permutation` of ``(seed, epoch)`` (over
``train_rows`` when the setting trains on a subset), batches of ``batch_size`` rows, an
evaluation every ``eval_every_steps`` and at the end of every epoch (the record goes to
``metrics.jsonl`` and to the hooks' ``on_eval``, which is how notebooks see it live), a
checkpoint every ``checkpoint_every_steps`` and at the end of every epoch.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable

import numpy as np
import torch

from .. import data
from ..hooks.base import Hook, RunInfo
from .config import resolve_device
from .rundir import JsonlWriter, RunDir, environment_info, load_checkpoint, save_checkpoint

__all__ = ["TrainingLoop", "TrainingDiverged", "load_dataset", "epoch_permutation"]

CHECKPOINT_FORMAT = 1

# Settings that may differ between a run and its resumption: they do not change the trajectory.
RUN_CONTROL = frozenset({"epochs", "out", "resume", "overwrite", "progress", "device",
                         "checkpoint_every_steps", "eval_every_steps", "eval_batch_size",
                         "eval_rows"})


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the epoch."""


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The row order of ``epoch``: a function of (seed, epoch) only, so a resumed run repeats it."""
    return np.random.default_rng((int(seed), int(epoch))).permutation(n)


def load_dataset(config: Any):
    """The dataset a config names: ``config.data`` (a name, directory or file, with
    ``config.data_seed`` for synthetic data) or the ``config.train`` and ``config.test`` files."""
    if config.data is not None:
        return data.resolve(config.data, seed=config.data_seed)
    if config.train is not None and config.test is not None:
        return data.load(train=config.train, test=config.test)
    raise ValueError("no data: give data= (a name, directory or file), train= and test=, "
                     "or a Dataset")


class TrainingLoop:
    """The shared part of a trainer (see the module docstring); subclasses call :meth:`_setup`
    first in ``__init__`` and set ``steps_per_epoch`` and ``num_train`` (rows per epoch).

    ``resumable``: the setting writes checkpoints and accepts ``resume``; ``eval_at_start``:
    also evaluate before the first step (step 0).
    """

    resumable: bool = True
    eval_at_start: bool = False

    steps_per_epoch: int
    num_train: int

    # ------------------------------------------------------------------ construction
    def _setup(self, config: Any, dataset: Any = None, hooks: Iterable[Hook] = ()) -> None:
        """Device, dataset (``config``'s unless given), hooks, the seeded generator, progress."""
        self.config = config
        self.device = resolve_device(config.device)
        self.dataset = dataset if dataset is not None else load_dataset(config)
        self.hooks: list[Hook] = list(hooks)
        self._rng_devices = [self.device] if self.device.type == "cuda" else []
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        # Rows the epochs go through (None: all num_train rows of the training set).
        self.train_rows: np.ndarray | None = None
        self.run_dir: RunDir | None = None

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

    def _open_checkpoint(self) -> dict | None:
        """Check ``config.out`` before any work (a non-empty one needs ``resume`` or
        ``overwrite``); on ``resume``, the checkpoint to continue from (None: start afresh)."""
        c = self.config
        resume = bool(getattr(c, "resume", False))
        self.run_dir = RunDir(c.out) if c.out is not None else None
        if self.run_dir is None:
            if resume:
                raise ValueError("resume=True needs out= (the run directory to resume)")
            return None
        if resume and not self.resumable:
            raise ValueError(f"resume=True is not supported by {type(self).__name__}: "
                             f"use overwrite=True")
        self.run_dir.check_free(resume, c.overwrite, resumable=self.resumable)
        if resume:
            self.resume_step = 0
            if self.run_dir.has_checkpoint():
                checkpoint = load_checkpoint(self.run_dir.checkpoint_path)
                self._check_same_settings(checkpoint)
                return checkpoint
        return None

    def _seed_global_rng(self) -> None:
        # Only the generators that fork_rng saves and restores: the CPU one and our device's.
        torch.default_generator.manual_seed(self.config.seed)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(self.config.seed)

    # ------------------------------------------------------------------ the algorithm
    def _step(self, rows: np.ndarray) -> float:
        """One optimisation step on the dataset rows ``rows``; returns the loss."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """The metrics of the current parameters."""
        raise NotImplementedError

    def _logged_metrics(self, final: bool) -> dict:
        """The metrics of an evaluation record; ``final``: the last evaluation of the run."""
        return self.evaluate()

    def _resolved(self) -> dict:
        """What ``config.json`` records under ``resolved`` besides the settings."""
        return {}

    def _record_extra(self) -> dict:
        """Fields every evaluation record carries after ``time_s`` (e.g. a one-off fit time)."""
        return {}

    def _start_loop(self) -> None:
        """Called once before the first step of :meth:`train` (e.g. model.train())."""

    def _algorithm_state(self) -> dict:
        """The checkpointed state of the algorithm (parameters, optimisers, sampler)."""
        raise NotImplementedError

    def _load_algorithm_state(self, ck: dict) -> None:
        """Restore :meth:`_algorithm_state` from the checkpoint ``ck``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ step bookkeeping
    def _check_finite(self, loss: float) -> None:
        """``TrainingDiverged`` naming the step, the epoch and the metrics file on a NaN/inf loss."""
        if math.isfinite(loss):
            return
        where = "" if self.run_dir is None else \
            f"; the evaluations logged so far are in {self.run_dir.metrics_path}"
        raise TrainingDiverged(f"training diverged: loss={loss} at step {self.step} (epoch "
                               f"{self.epoch}, batch {self.batch_in_epoch} of the epoch){where}")

    def _advance(self, loss: float, seconds: float) -> None:
        """Count a finished step: its loss (for the next record) and its training time."""
        self.step += 1
        self.batch_in_epoch += 1
        self._loss_sum += loss
        self._loss_count += 1
        self.time_s += seconds

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue exactly where this one is."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            # RNG states are device-specific (a CPU generator's state is 5056 bytes, a CUDA
            # one's 16): a resume must run on the same kind of device.
            "device_type": self.device.type,
            **self._algorithm_state(),
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
        diff = sorted(k for k in mine if k not in RUN_CONTROL and k in old and old[k] != mine[k])
        if diff:
            desc = ", ".join(f"{k}={mine[k]!r} (checkpoint: {old[k]!r})" for k in diff)
            raise ValueError(f"resume: settings differ from the checkpointed run: {desc}")
        # Checkpoints without the field: only CUDA runs save a CUDA RNG state.
        saved = ck.get("device_type", "cuda" if ck.get("cuda_rng") is not None else "cpu")
        if saved != self.device.type:
            raise ValueError(
                f"resume: the checkpoint was written on {saved!r} but this run resolves "
                f"device={self.config.device!r} to {str(self.device)!r}; the sampler's and "
                f"dropout's random states only continue on the same kind of device: resume "
                f"with --device {'cuda' if saved == 'cuda' else 'cpu'} (or start a new run)")

    def _load_checkpoint(self, ck: dict) -> None:
        """Restore everything from a checkpoint already checked by :meth:`_check_same_settings`."""
        self._load_algorithm_state(ck)
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
        """Write ``checkpoint.pt`` atomically (no-op without a run directory or for a setting
        that does not resume)."""
        if self.run_dir is not None and self.resumable:
            save_checkpoint(self.run_dir.checkpoint_path, self.state_dict())

    # ------------------------------------------------------------------ evaluation, hooks
    def _eval_and_log(self, final: bool = False) -> dict:
        """Evaluate, append the record to the history and ``metrics.jsonl``, publish it;
        ``final``: the last evaluation of the run (see :meth:`_logged_metrics`)."""
        t0 = time.perf_counter()
        metrics = self._logged_metrics(final)
        record = {
            "epoch": round(self.step / self.steps_per_epoch, 6),
            "step": self.step,
            "time_s": self.time_s,
            **self._record_extra(),
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
        """What hooks get in ``on_train_start``."""
        return RunInfo(run_dir=None if self.run_dir is None else self.run_dir.path,
                       config=self.config.to_dict(), num_labels=self.num_labels,
                       num_features=int(self.dataset.num_features),
                       steps_per_epoch=self.steps_per_epoch, device=self.device,
                       dataset=self.dataset, resume_step=self.resume_step)

    def _close_hooks(self) -> None:
        errors = []
        for h in self.hooks:
            try:
                h.close()
            except Exception as e:  # close the others anyway; report the first failure
                errors.append(e)
        if errors:
            raise errors[0]

    # ------------------------------------------------------------------ training
    def train(self) -> dict:
        """Train to ``config.epochs``; returns the last evaluation record (metrics.jsonl's)."""
        if self._started:
            raise RuntimeError(f"train() was already called on this {type(self).__name__}: "
                               f"build a new one")
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
        self.run_dir.prepare(resume=bool(getattr(c, "resume", False)), overwrite=c.overwrite)
        if self.resume_step is not None:
            self.run_dir.truncate_metrics(self.resume_step)
        self.run_dir.write_config({**c.to_dict(), "resolved": self._resolved(),
                                   "environment": environment_info(self.device)})
        self._metrics_writer = self.run_dir.metrics_writer()

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """Dataset row ids in the order of ``epoch``."""
        perm = epoch_permutation(self.config.seed, epoch, self.num_train)
        return perm if self.train_rows is None else self.train_rows[perm]

    def _loop(self) -> None:
        from tqdm.auto import tqdm
        c = self.config
        spe, B = self.steps_per_epoch, c.batch_size
        every_eval = getattr(c, "eval_every_steps", None)
        every_ck = getattr(c, "checkpoint_every_steps", None)
        self._start_loop()
        if self.eval_at_start and not self.history:
            self._eval_and_log()
        while self.epoch < c.epochs:
            epoch = self.epoch
            order = self._epoch_order(epoch)
            bar = tqdm(total=spe, initial=self.batch_in_epoch, disable=not c.progress,
                       desc=f"epoch {epoch + 1}/{c.epochs}", unit="step", leave=True)
            try:
                while self.epoch == epoch and self.batch_in_epoch < spe:
                    rows = order[self.batch_in_epoch * B:(self.batch_in_epoch + 1) * B]
                    loss = self._step(rows)
                    bar.update(1)
                    end_of_epoch = self.batch_in_epoch == spe
                    if self.step % 20 == 0 or end_of_epoch:
                        bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    if end_of_epoch:
                        self.epoch, self.batch_in_epoch = epoch + 1, 0
                    if end_of_epoch or (every_eval and self.step % every_eval == 0):
                        self._eval_and_log(final=end_of_epoch and self.epoch == c.epochs)
                    if end_of_epoch or (every_ck and self.step % every_ck == 0):
                        self.save_checkpoint()
            finally:
                bar.close()
