"""Base class for hooks that keep their records on disk and push them live."""
from __future__ import annotations

import numpy as np
import torch

from ..validation import check_int
from .base import Hook, RunInfo
from .storage import JsonlWriter, RecordWriter, truncate_jsonl, truncate_records


class RecordingHook(Hook):
    """A hook with a JSON-lines file and optional binary record files.

    Subclasses declare ``record_dtypes = {"suffix": dtype}``; files live in
    ``RUN/hooks/``.  Without a run directory nothing is written and records only
    reach subscribers.  On resume, records from steps the resumed run will redo
    are dropped so no step is logged twice.
    """

    record_dtypes: dict[str, np.dtype] = {}

    def __init__(self, every: int = 1, probe: int | None = None, seed: int = 0) -> None:
        super().__init__(every)
        self.probe = None if probe is None else check_int("probe", probe, 1)
        self.seed = seed
        self.run: RunInfo | None = None
        self._jsonl: JsonlWriter | None = None
        self._bins: dict[str, RecordWriter] = {}

    def on_train_start(self, run: RunInfo) -> None:
        self.run = run
        if run.run_dir is None:
            return
        d = run.run_dir / "hooks"
        d.mkdir(parents=True, exist_ok=True)
        resume = getattr(run, "resume_step", None)
        if resume is not None:
            self.truncate_for_resume(d, resume)
        self._jsonl = JsonlWriter(d / f"{self.name}.jsonl", fsync=False)  # flushed: survives SIGKILL
        self._bins = {s: RecordWriter(d / f"{self.name}{s}.bin", dt) for s, dt in self.record_dtypes.items()}

    def truncate_for_resume(self, d, resume_step: int) -> None:
        """Drop records of steps >= ``resume_step``: the resumed run logs them again."""
        truncate_jsonl(d / f"{self.name}.jsonl", lambda r: r.get("step", -1) < resume_step)
        for suffix in self.record_dtypes:
            truncate_records(d / f"{self.name}{suffix}.bin", resume_step - 1)

    def emit(self, record: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write ``record`` (and binary ``arrays`` by suffix), then publish it live."""
        if arrays:
            for suffix, arr in arrays.items():
                if suffix in self._bins:
                    self._bins[suffix].write(arr)
        if self._jsonl is not None:
            self._jsonl.write(record)
        if self._subscribers:
            live = dict(record)
            if arrays:
                live.update({f"array{s}": a for s, a in arrays.items()})
            self.publish(live)

    def probe_rows(self, batch_size: int) -> slice:
        """The probe is the first ``probe`` rows of the (shuffled) batch."""
        return slice(0, batch_size if self.probe is None else min(self.probe, batch_size))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        for w in self._bins.values():
            w.close()


#: Label count up to which the hooks that score every label for their probe rows (``ranks``,
#: ``staleness``) keep their default interval; above it, when no interval was given, the interval
#: grows in proportion to L, so their cost and their bytes per epoch stay bounded at any L.
FULL_SCORE_LABELS = 131_072


def interval_for(base: int, num_labels: int) -> int:
    """The default interval of a full-scoring hook at ``num_labels`` labels (``base`` up to
    :data:`FULL_SCORE_LABELS`, then proportional to L)."""
    return max(int(base), round(base * num_labels / FULL_SCORE_LABELS))


class FullScoringHook(RecordingHook):
    """A recording hook that scores all L labels for its probe rows on the steps it logs
    (``ranks``, ``grad``, ``staleness``).  Given no interval, it logs every ``default_every``
    steps, less often above :data:`FULL_SCORE_LABELS` labels (:func:`interval_for`), so its cost
    and its bytes per epoch stay bounded at any L; an interval given is kept."""

    default_every: int = 20

    def __init__(self, every: int | None = None, probe: int | None = 50, seed: int = 0) -> None:
        super().__init__(self.default_every if every is None else every, probe, seed)
        self._auto_every = every is None

    def on_train_start(self, run: RunInfo) -> None:
        if self._auto_every:
            self.every = interval_for(self.default_every, run.num_labels)
        super().on_train_start(run)


def interval_fields(ctx) -> dict:
    """Refresh-interval position of a step (-1 when the sampler never refreshes)."""
    ssr = ctx.steps_since_refresh
    ri = ctx.refresh_interval
    return {"steps_since_refresh": -1 if ssr is None else int(ssr),
            "refresh_interval": -1 if ri is None else int(ri)}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
