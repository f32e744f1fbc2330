"""Top + uniform: k exact hardest negatives plus R - k uniform ones."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..validation import check_int
from .base import (DEFAULT_K, SOURCE_EXACT, SOURCE_UNIFORM, Negatives, NegativeSampler, Positives,
                   SamplerEnv)
from .ops import first_occurrence
from .top import exact_hardest
from .uniform import UniformSampler

if TYPE_CHECKING:
    from ..core.config import TrainConfig


class TopUniformSampler(NegativeSampler):
    """Per row, the ``k`` exact hardest negatives (live model, exhaustive) and
    ``R - k`` uniform negatives.

    Columns ``[:k]`` are the exact ones (``SOURCE_EXACT``), ``[k:]`` the
    uniform ones (``SOURCE_UNIFORM``).  A uniform draw that repeats an exact
    negative (or an earlier uniform one) gets ``mask`` False, so every label
    enters the loss once and the exact ones are never the ones dropped.
    """

    name = "top-uniform"
    needs_model = True
    options = ("negatives", "mips_k")

    @classmethod
    def from_config(cls, config: "TrainConfig", env: SamplerEnv) -> "TopUniformSampler":
        k = DEFAULT_K if config.mips_k is None else config.mips_k
        return cls(env.num_labels, config.negatives, k)

    def __init__(self, num_labels: int, num_negatives: int, k: int, *,
                 label_chunk: int = 65536) -> None:
        super().__init__(num_labels, num_negatives)
        self.k = check_int("k", k, 1, self.num_negatives)
        self.label_chunk = int(label_chunk)
        self._uniform = UniformSampler(num_labels, num_negatives)

    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Negatives:
        hard, hard_ok = exact_hardest(emb, positives, W, bias, self.k, self.label_chunk)
        rest = self.num_negatives - self.k
        uni, uni_ok = self._uniform.draw(positives, rest, emb.device, generator)
        ids = torch.cat([hard, uni], dim=1)
        mask = first_occurrence(ids, torch.cat([hard_ok, uni_ok], dim=1))
        source = torch.full(ids.shape, SOURCE_UNIFORM, dtype=torch.uint8, device=emb.device)
        source[:, :self.k] = SOURCE_EXACT
        return Negatives(ids, mask, source)
