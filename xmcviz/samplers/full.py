"""The full loss as a sampler: every label is a negative unless positive (the reference)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from ..validation import check_int
from .base import SOURCE_ALL, Negatives, NegativeSampler, Positives, SamplerEnv
from .ops import positive_mask_dense, positives_on

MAX_ELEMENTS = 2 ** 31
# Bytes one [B, L] entry of a full-loss step costs: the loss's int64 ids of [B, P + L] (8),
# masks (2-3), scores, softplus, where and their gradients in float32 (~20), the unique-ids
# path's int64 inverse (8), rounded up: the bound must trip before memory runs out.
BYTES_PER_ENTRY = 48

if TYPE_CHECKING:
    from ..core.config import TrainConfig


def free_memory_bytes(device: torch.device | str) -> int:
    """Memory a step may still take on ``device``: free GPU memory on CUDA (``mem_get_info``),
    available RAM on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional: the kernel's count of available pages
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


class FullSampler(NegativeSampler):
    """Returns all L label ids per row ([B, L]), positives with ``mask`` False.

    ``ids`` and ``source`` are broadcast views of one row (no B x L int64
    copy): read them, don't write into them.  ``mask`` is a real [B, L] bool.
    ``num_negatives`` is nominal (L - 1); the returned width is L.  A batch
    needing more than :attr:`max_elements` entries raises ``ValueError``: the full
    loss is for small L, a reference to compare samplers against.  The bound is
    the smaller of ``max_elements`` (the int32 index range) and what the free
    memory of ``device`` holds at ``BYTES_PER_ENTRY`` bytes per entry, read when
    it is asked for (the trainer checks it before training, ``sample`` every step).
    """

    name = "full"
    options = ()  # every label is a negative: no R

    @classmethod
    def from_config(cls, config: "TrainConfig", env: SamplerEnv) -> "FullSampler":
        return cls(env.num_labels, device=env.device)

    def __init__(self, num_labels: int, *, max_elements: int = MAX_ELEMENTS,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(num_labels, num_labels - 1)
        self.cap = check_int("max_elements", max_elements, 1)
        self.device = torch.device(device)

    @property
    def max_elements(self) -> int:
        """Entries B * L a batch may have: the cap, or fewer when memory is short."""
        return max(1, min(self.cap, free_memory_bytes(self.device) // BYTES_PER_ENTRY))

    def sample(self, emb: torch.Tensor, positives: Positives, *, epoch: int = 0,
               generator: torch.Generator | None = None, W: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> Negatives:
        B, L = emb.shape[0], self.num_labels
        device = emb.device
        if device != self.device:  # the bound is the free memory of the device the batch is on
            self.device = device
        limit = self.max_elements
        if B * L > limit:
            why = ("the int32 index range" if limit == self.cap else
                   f"the free memory of {device} ({free_memory_bytes(device) / 2**30:.1f} GiB at "
                   f"{BYTES_PER_ENTRY} bytes per entry)")
            raise ValueError(f"the full loss needs B*L = {B}*{L} = {B * L} entries per batch, above "
                             f"max_elements={limit} ({why}): use a smaller batch (at most {max(1, limit // L)}) "
                             f"or a sampler")
        ids = torch.arange(L, device=device).expand(B, L)
        mask = ~positive_mask_dense(positives_on(positives, device), L)
        source = torch.full((1, L), SOURCE_ALL, dtype=torch.uint8, device=device).expand(B, L)
        return Negatives(ids, mask, source)
