"""LabelFrequency: how often each label is drawn as a negative, by window and source.

Every counted step adds the batch's negatives (those in the loss) to per-source
count vectors.  Two kinds of window are closed and written:

* ``steps`` — every ``window`` steps;
* ``refresh`` — from one sampler refresh to the next (MIPS samplers), which is
  where the paper sees a few labels penalised over and over (see
  docs/background.md, section "Label concentration").

Files: ``hooks/freq.jsonl`` (per window and source: ``draws``, ``distinct``,
``top10_share`` = share of draws taken by the 10 most drawn labels,
``entropy`` = Shannon entropy of the counts divided by log L, 1 = uniform,
``count_hist`` = how many labels were drawn 1, 2-3, 4-7, ... times (bucket i
holds counts in [2^i, 2^(i+1))), ``kept_draws`` = draws of the labels written
to the ``.bin`` file) and ``hooks/freq.bin`` (per window and source, the ``keep``
most drawn labels with their counts: dtype ``FREQ_DTYPE``).  A window with at
most ``keep`` distinct labels per source is written whole, so the full count
vector is recovered by scattering; at large L the file stays bounded by
``keep`` records per window and source instead of growing with L (every
summary above is still computed from the full vector).  A window that is open
when the run stops is written by ``close()``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..samplers.base import SOURCE_NAMES
from ..validation import check_int
from .base import RunInfo, StepContext
from .windows import WindowedHook

FREQ_DTYPE = np.dtype([("window", "<i4"), ("label", "<i4"), ("source", "u1"), ("count", "<i4")])
# Labels written per window and source: 13 bytes each, so ~13 KB per window and source
# whatever L is; a window with fewer distinct labels (small L) is written exactly.
DEFAULT_KEEP = 1024


class LabelFrequency(WindowedHook):
    """Count negative draws per label; ``every``: count every n-th step.

    ``window``: steps per ``steps`` window; ``by_refresh``: also close a window at each sampler
    refresh; ``keep``: most drawn labels written per window and source (bounds ``freq.bin``).
    """

    name = "freq"
    record_dtypes = {"": FREQ_DTYPE}

    def __init__(self, every: int = 1, window: int = 50, by_refresh: bool = True,
                 keep: int = DEFAULT_KEEP) -> None:
        super().__init__(every, window, by_refresh)
        self.keep = check_int("keep", keep, 1)

    def on_train_start(self, run: RunInfo) -> None:
        super().on_train_start(run)
        self._L = run.num_labels
        self._device = run.device

    def truncate_for_resume(self, d, resume_step: int) -> None:
        # Count records carry a window id, not a step: keep the windows whose
        # summaries survive the step-based truncation.
        from .storage import atomic_write_bytes, read_jsonl, read_records
        super().truncate_for_resume(d, resume_step)
        kept = {r["window"] for r in read_jsonl(d / f"{self.name}.jsonl")}
        path = d / f"{self.name}.bin"
        if path.exists() and path.with_name(path.name + ".json").exists():
            rec = read_records(path)
            atomic_write_bytes(path, rec[np.isin(rec["window"], list(kept))].tobytes())

    def new_window(self) -> dict:
        # int32: half the memory of int64 at large L; a window never nears 2^31 draws.
        return {"counts": torch.zeros((len(SOURCE_NAMES), self._L), dtype=torch.int32, device=self._device)}

    @torch.no_grad()
    def before_update(self, ctx: StepContext) -> None:
        windows = self.open_windows(ctx)
        neg = ctx.negatives
        # One flat key per slot and the mask as weights: no boolean indexing, O(B R) per step
        # whatever L is (masked slots may hold -1: they point at label 0 with weight 0).
        key = (neg.source.long() * self._L + torch.where(neg.mask, neg.ids, 0)).reshape(-1)
        weight = neg.mask.reshape(-1).to(torch.int32)
        for win in windows:
            win["counts"].view(-1).scatter_add_(0, key, weight)

    def write_window(self, win: dict, base: dict) -> bool:
        counts = win["counts"]
        if int(counts.sum()) == 0:
            return False
        wid = base["window"]
        codes = torch.nonzero(counts.sum(1)).flatten().tolist()
        kept = {code: top_counts(counts[code], self.keep) for code in codes}
        rec = np.concatenate([_records(wid, code, lab, cnt) for code, (lab, cnt) in kept.items()])
        summaries = [dict(base, source="all", **summarise(counts.sum(0), self._L),
                          kept_draws=int(rec["count"].sum()))]
        for code in codes:
            summaries.append(dict(base, source=SOURCE_NAMES[code], **summarise(counts[code], self._L),
                                  kept_draws=int(kept[code][1].sum())))
        for i, s in enumerate(summaries):
            self.emit(s, {"": rec} if i == 0 else None)
        return True


def top_counts(counts: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The non-zero entries of ``counts`` [L], at most ``keep`` of them (most drawn first when
    cut, ties by label id); ``(labels, counts)`` as CPU int64 tensors."""
    nz = torch.nonzero(counts).flatten()
    if nz.numel() > keep:
        c = counts[nz].to(torch.int64)
        # Sort by (count desc, label asc) in one key: labels < 2^31 fit below the count.
        key = c * (1 << 32) + (torch.iinfo(torch.int32).max - nz)
        nz = nz[torch.topk(key, keep).indices]
    return nz.cpu(), counts[nz].to(torch.int64).cpu()


def _records(window: int, source: int, labels: torch.Tensor, counts: torch.Tensor) -> np.ndarray:
    rec = np.zeros(int(labels.numel()), dtype=FREQ_DTYPE)
    rec["window"] = window
    rec["label"] = labels.numpy()
    rec["source"] = source
    rec["count"] = counts.numpy()
    return rec


def summarise(counts: torch.Tensor, num_labels: int) -> dict:
    """Summaries of one count vector: draws, distinct labels, top-10 share, entropy / log L and
    ``count_hist`` (labels per power-of-two count bucket: 1, 2-3, 4-7, ...)."""
    total = int(counts.sum())
    if total == 0:
        return {"draws": 0, "distinct": 0, "top10_share": 0.0, "entropy": 0.0, "count_hist": []}
    c = counts[counts > 0].double()
    p = c / total
    top = torch.topk(c, min(10, c.numel())).values.sum().item()
    ent = float(-(p * p.log()).sum()) / math.log(num_labels)
    hist = torch.bincount(torch.log2(c).floor().long()).tolist()
    return {"draws": total, "distinct": int(c.numel()), "top10_share": top / total, "entropy": ent,
            "count_hist": hist}
