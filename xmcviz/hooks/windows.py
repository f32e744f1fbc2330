"""WindowedHook: a recording hook that sums what it sees over windows of steps.

Two kinds of window are open at once and closed independently:

* ``steps`` — every ``window`` steps (aligned to multiples of ``window``);
* ``refresh`` — from one sampler refresh to the next (samplers that refresh), which is the
  unit in which a stale index repeats itself.

A subclass says what a window holds (:meth:`new_window`), adds a step to every open window
(``for win in self.open_windows(ctx): ...`` in ``before_update``) and writes a closed one
(:meth:`write_window`, given the window's id, kind and step range).  A window still open when the
run stops is written by ``close()``; on resume, the records of redone steps are dropped and
window ids continue after the last one written.
"""
from __future__ import annotations

from .base import RunInfo, StepContext
from .recording import RecordingHook
from .storage import read_jsonl, truncate_jsonl
from ..validation import check_int


class WindowedHook(RecordingHook):
    """Base class of the ``freq``, ``popularity`` and ``hidden`` hooks (see the module docstring)."""

    def __init__(self, every: int = 1, window: int = 50, by_refresh: bool = True,
                 probe: int | None = None, seed: int = 0) -> None:
        super().__init__(every, probe, seed)
        self.window = check_int("window", window, 1)
        self.by_refresh = bool(by_refresh)
        self._open: dict[str, dict] = {}
        self._next_window = 0

    # ------------------------------------------------------------------ for subclasses
    def new_window(self) -> dict:
        """The accumulators of a new window (merged into its dict)."""
        raise NotImplementedError

    def write_window(self, win: dict, base: dict) -> None:
        """Write a closed window; ``base`` has ``window``, ``kind``, ``step`` (its last step),
        ``start_step`` and ``end_step``.  Return False for a window that saw nothing: nothing
        is written and its id goes to the next window."""
        raise NotImplementedError

    def open_windows(self, ctx: StepContext) -> list[dict]:
        """Close the ``steps`` window that ``ctx.step`` leaves, open the windows ``ctx.step``
        belongs to, and return them (each already marked as having seen ``ctx.step``)."""
        w = self._open.get("steps")
        if w is not None and ctx.step - w["start"] >= self.window:
            self._close("steps")
        if "steps" not in self._open:
            self._open["steps"] = self._new("steps", ctx.step - ctx.step % self.window)
        if self.by_refresh and ctx.steps_since_refresh is not None and "refresh" not in self._open:
            self._open["refresh"] = self._new("refresh", ctx.step - ctx.steps_since_refresh)
        for win in self._open.values():
            win["last"] = ctx.step
        return list(self._open.values())

    # ------------------------------------------------------------------ moments
    def on_train_start(self, run: RunInfo) -> None:
        super().on_train_start(run)
        if run.run_dir is not None:
            done = read_jsonl(run.run_dir / "hooks" / f"{self.name}.jsonl")
            self._next_window = 1 + max((r.get("window", -1) for r in done), default=-1)

    def truncate_for_resume(self, d, resume_step: int) -> None:
        truncate_jsonl(d / f"{self.name}.jsonl", lambda r: r.get("step", -1) < resume_step)

    def on_refresh(self, info: dict) -> None:
        if "refresh" in self._open:
            self._close("refresh")

    def close(self) -> None:
        for kind in list(self._open):
            self._close(kind)
        super().close()

    # ------------------------------------------------------------------ internals
    def _new(self, kind: str, step: int) -> dict:
        return {"kind": kind, "start": step, "last": step, **self.new_window()}

    def _close(self, kind: str) -> None:
        win = self._open.pop(kind)
        base = {"window": self._next_window, "kind": kind, "step": int(win["last"]),
                "start_step": int(win["start"]), "end_step": int(win["last"]) + 1}
        if self.write_window(win, base) is not False:
            self._next_window += 1
