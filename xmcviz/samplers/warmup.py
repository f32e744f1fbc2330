"""Warm-up wrapper: a static sampler for the first epochs, then the inner (hard) one."""
from __future__ import annotations

from typing import Callable

import torch

from ..validation import check_int
from .base import Negatives, NegativeSampler, Positives
from .uniform import UniformSampler


class WarmupSampler(NegativeSampler):
    """Sample with ``warmup`` during epochs ``[0, warmup_epochs)``, then with ``inner``.

    Hard negatives from the first step make the negative gradient dwarf the
    positive one (docs/background.md, section "Gradient dominance"); a few epochs of uniform negatives avoid
    that.  The inner sampler is never refreshed during the warm-up, and its
    refresh is due at the first step after the switch.

    ``warmup`` is a sampler instance, or a factory called as
    ``warmup(num_labels, num_negatives)`` (default :class:`UniformSampler`).
    Schedule queries (``refresh_interval``, ``steps_since_refresh``,
    ``last_refresh_step``) and ``name`` are the inner sampler's.
    """

    def __init__(self, inner: NegativeSampler, warmup_epochs: int,
                 warmup: NegativeSampler | Callable[[int, int], NegativeSampler] = UniformSampler) -> None:
        self.inner = inner
        super().__init__(inner.num_labels, inner.num_negatives)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.warmup = warmup if isinstance(warmup, NegativeSampler) else warmup(inner.num_labels, inner.num_negatives)
        if (self.warmup.num_labels, self.warmup.num_negatives) != (inner.num_labels, inner.num_negatives):
            raise ValueError(
                f"warm-up sampler has num_labels={self.warmup.num_labels}, num_negatives="
                f"{self.warmup.num_negatives}; the inner one {inner.num_labels}, {inner.num_negatives}")
        self.name = inner.name
        self.needs_model = inner.needs_model
        self.setup_info = getattr(inner, "setup_info", None)  # one-off costs (meta: clustering)

    # The inner sampler owns the refresh bookkeeping.
    @property
    def last_refresh_step(self) -> int | None:  # type: ignore[override]
        return self.inner.last_refresh_step

    @last_refresh_step.setter
    def last_refresh_step(self, value: int | None) -> None:
        self.inner.last_refresh_step = value

    def in_warmup(self, epoch: int) -> bool:
        return epoch < self.warmup_epochs

    def active(self, epoch: int) -> NegativeSampler:
        """The sampler that draws in ``epoch``."""
        return self.warmup if self.in_warmup(epoch) else self.inner

    def set_steps_per_epoch(self, steps_per_epoch: int) -> None:
        super().set_steps_per_epoch(steps_per_epoch)
        self.inner.set_steps_per_epoch(steps_per_epoch)
        self.warmup.set_steps_per_epoch(steps_per_epoch)

    def refresh_due(self, step: int, epoch: int) -> bool:
        if self.in_warmup(epoch):
            return False
        # Never refreshed during the warm-up, a model-based inner sampler is due
        # at the first step after the switch (its "first sample needs a refresh").
        return self.inner.refresh_due(step, epoch)

    def refresh(self, W: torch.Tensor, step: int, epoch: int, *,
                bias: torch.Tensor | None = None) -> dict:
        if bias is None:  # samplers written without the bias keyword still work
            return self.inner.refresh(W, step, epoch)
        return self.inner.refresh(W, step, epoch, bias=bias)

    def steps_since_refresh(self, step: int) -> int | None:
        return self.inner.steps_since_refresh(step)

    def refresh_interval(self) -> int | None:
        return self.inner.refresh_interval()

    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Negatives:
        return self.active(epoch).sample(emb, positives, epoch=epoch, generator=generator,
                                         W=W, bias=bias, rows=rows)

    # The inner sampler's trainable part (meta's head) trains during the warm-up too.
    def trainable(self) -> list[torch.nn.Parameter]:
        return self.inner.trainable()

    def auxiliary_loss(self, emb: torch.Tensor, positives: Positives) -> torch.Tensor | None:
        return self.inner.auxiliary_loss(emb, positives)

    def eval_stats(self) -> dict:
        return self.inner.eval_stats()

    def state_dict(self) -> dict:
        return {"warmup_epochs": self.warmup_epochs, "inner": self.inner.state_dict(),
                "warmup": self.warmup.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state["inner"])
        self.warmup.load_state_dict(state["warmup"])
