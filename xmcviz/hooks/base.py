"""Hook points of the trainer.

The trainer calls every registered hook at fixed moments:

* ``on_train_start(run)`` once, with a :class:`RunInfo` (run directory,
  config, sizes, device);
* ``before_update(ctx)`` on steps where ``step % hook.every == 0``, after the
  forward pass and before the optimiser moves anything, so ``ctx`` describes the
  model that produced the scores and chose the negatives;
* ``after_update(ctx)`` on the same steps, after the optimiser step;
* ``on_refresh(info)`` after a sampler refresh (``info`` has ``step``,
  ``epoch`` and the sampler's own dict);
* ``on_eval(record)`` after each evaluation (the record written to
  ``metrics.jsonl``);
* ``close()`` when training ends or is interrupted.

Hooks must be cheap when they do nothing and must not change the training
trajectory (use their own RNG, never the trainer's generator).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..samplers.base import NegativeSampler, Negatives, Positives
from ..validation import check_int


@dataclass
class RunInfo:
    run_dir: Path | None
    config: dict
    num_labels: int
    num_features: int
    steps_per_epoch: int
    device: torch.device
    dataset: Any = None  # the xmcviz Dataset (for label frequencies, probes)
    # Resuming from a checkpoint taken after this many steps: hooks drop their records of
    # steps >= resume_step (the resumed run redoes them).  None: a fresh run.
    resume_step: int | None = None


@dataclass
class StepContext:
    """What a hook sees at a step.  Tensors are detached; do not modify them."""

    step: int                 # global step, 0-based
    epoch: int                # 0-based
    step_in_epoch: int
    rows: torch.Tensor        # int64 [B] dataset row ids of the batch
    emb: torch.Tensor         # [B, d] embeddings E_x (dense)
    positives: Positives
    negatives: Negatives
    pos_scores: torch.Tensor  # [B, P] scores f_j of the positives (padded)
    neg_scores: torch.Tensor  # [B, R] scores of the sampled negatives
    loss: float
    model: torch.nn.Module    # has .W ([L, d]) and .bias ([L] or None)
    sampler: NegativeSampler
    eta_ratio: float = 1.0
    steps_since_refresh: int | None = None
    refresh_interval: int | None = None


class Hook:
    """Base class: override the moments you need; set ``every`` (steps)."""

    name: str = "hook"

    def __init__(self, every: int = 1) -> None:
        self.every = check_int("every", every, 1)
        self._subscribers: list[Callable[[dict], None]] = []

    # live subscribers -----------------------------------------------------
    def subscribe(self, callback: Callable[[dict], None]) -> Callable[[dict], None]:
        """Call ``callback(record)`` for every record this hook produces."""
        self._subscribers.append(callback)
        return callback

    def publish(self, record: dict) -> None:
        for cb in list(self._subscribers):
            cb(record)

    # moments ---------------------------------------------------------------
    def wants(self, step: int) -> bool:
        return step % self.every == 0

    def on_train_start(self, run: RunInfo) -> None:
        pass

    def before_update(self, ctx: StepContext) -> None:
        pass

    def after_update(self, ctx: StepContext) -> None:
        pass

    def on_refresh(self, info: dict) -> None:
        pass

    def on_eval(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass
