"""LabelFrequency: how often each label is drawn as a negative, by window and source.

Every counted step adds the batch's negatives (those in the loss) to per-source
count vectors.  Two kinds of window are closed and written:

* ``steps`` — every ``window`` steps;
* ``refresh`` — from one sampler refresh to the next (MIPS samplers), which is
  where the paper sees a few labels penalised over and over (SPEC 3.3).

Files: ``hooks/freq.jsonl`` (per window and source: ``draws``, ``distinct``,
``top10_share`` = share of draws taken by the 10 most drawn labels,
``entropy`` = Shannon entropy of the counts divided by log L, 1 = uniform) and
``hooks/freq.bin`` (the non-zero entries of each window's count vector: dtype
``FREQ_DTYPE``, so the full vector is recovered by scattering).  A window that
is open when the run stops is written by ``close()``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..samplers.base import SOURCE_NAMES
from .base import RunInfo, StepContext
from .recording import RecordingHook, to_numpy
from .storage import truncate_jsonl

FREQ_DTYPE = np.dtype([("window", "<i4"), ("label", "<i4"), ("source", "u1"), ("count", "<i4")])


class LabelFrequency(RecordingHook):
    """Count negative draws per label; ``every``: count every n-th step."""

    name = "freq"
    record_dtypes = {"": FREQ_DTYPE}

    def __init__(self, every: int = 1, window: int = 50, by_refresh: bool = True) -> None:
        super().__init__(every)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r} is out of range: allowed integers >= 1")
        self.window = window
        self.by_refresh = by_refresh
        self._open: dict[str, dict] = {}
        self._next_window = 0

    def on_train_start(self, run: RunInfo) -> None:
        super().on_train_start(run)
        if run.run_dir is not None:
            from .storage import read_jsonl
            done = read_jsonl(run.run_dir / "hooks" / f"{self.name}.jsonl")
            self._next_window = 1 + max((r["window"] for r in done), default=-1)
        self._L = run.num_labels
        self._device = run.device

    def truncate_for_resume(self, d, resume_step: int) -> None:
        # Count records carry a window id, not a step: keep the windows whose
        # summaries survive the step-based truncation.
        from .storage import atomic_write_bytes, read_jsonl, read_records
        truncate_jsonl(d / f"{self.name}.jsonl", lambda r: r.get("step", -1) < resume_step)
        kept = {r["window"] for r in read_jsonl(d / f"{self.name}.jsonl")}
        path = d / f"{self.name}.bin"
        if path.exists() and path.with_name(path.name + ".json").exists():
            rec = read_records(path)
            atomic_write_bytes(path, rec[np.isin(rec["window"], list(kept))].tobytes())

    def _new(self, kind: str, step: int) -> dict:
        return {"kind": kind, "start": step, "last": step,
                "counts": torch.zeros((len(SOURCE_NAMES), self._L), dtype=torch.int64, device=self._device)}

    @torch.no_grad()
    def before_update(self, ctx: StepContext) -> None:
        w = self._open.get("steps")
        if w is not None and ctx.step - w["start"] >= self.window:
            self._close("steps")
        if "steps" not in self._open:
            self._open["steps"] = self._new("steps", ctx.step - ctx.step % self.window)
        if self.by_refresh and ctx.steps_since_refresh is not None and "refresh" not in self._open:
            self._open["refresh"] = self._new("refresh", ctx.step - ctx.steps_since_refresh)
        neg = ctx.negatives
        ids = neg.ids[neg.mask]
        src = neg.source[neg.mask].long()
        ones = torch.ones_like(ids)
        for win in self._open.values():
            # index_put_ with accumulate: O(B R) per step, independent of L.
            win["counts"].index_put_((src, ids), ones, accumulate=True)
            win["last"] = ctx.step

    def on_refresh(self, info: dict) -> None:
        if "refresh" in self._open:
            self._close("refresh")

    def _close(self, kind: str) -> None:
        win = self._open.pop(kind)
        counts = win["counts"]
        if int(counts.sum()) == 0:
            return
        wid = self._next_window
        self._next_window += 1
        nz_src, nz_lab = counts.nonzero(as_tuple=True)
        rec = np.zeros(int(nz_src.numel()), dtype=FREQ_DTYPE)
        rec["window"] = wid
        rec["label"] = to_numpy(nz_lab)
        rec["source"] = to_numpy(nz_src)
        rec["count"] = to_numpy(counts[nz_src, nz_lab])
        base = {"window": wid, "kind": kind, "step": int(win["last"]), "start_step": int(win["start"]),
                "end_step": int(win["last"]) + 1}
        summaries = [dict(base, source="all", **summarise(counts.sum(0), self._L))]
        for code in torch.unique(nz_src).tolist():
            summaries.append(dict(base, source=SOURCE_NAMES[code], **summarise(counts[code], self._L)))
        for i, s in enumerate(summaries):
            self.emit(s, {"": rec} if i == 0 else None)

    def close(self) -> None:
        for kind in list(self._open):
            self._close(kind)
        super().close()


def summarise(counts: torch.Tensor, num_labels: int) -> dict:
    """Summaries of one count vector: draws, distinct labels, top-10 share, entropy / log L."""
    total = int(counts.sum())
    if total == 0:
        return {"draws": 0, "distinct": 0, "top10_share": 0.0, "entropy": 0.0}
    c = counts[counts > 0].double()
    p = c / total
    top = torch.topk(c, min(10, c.numel())).values.sum().item()
    ent = float(-(p * p.log()).sum()) / math.log(num_labels)
    return {"draws": total, "distinct": int(c.numel()), "top10_share": top / total, "entropy": ent}
