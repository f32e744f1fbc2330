"""Several labelled training runs in one process, with live figures and a results file.

What a notebook does, as a small tested object::

    exp = Experiment(hooks="grad:5")
    exp.add_figure("p5", lambda e: plots.metric_curves(e.metrics(), "P@5", x="step"))
    exp.show()                                  # one display handle per figure
    for label, cfg in configs.items():
        exp.run(label, cfg)                     # figures redraw while it trains
    exp.finish()                                # final figures, always drawn
    exp.write(output_dir)                       # output_dir/results.json

A run's config is a multi-label :class:`~xmcviz.core.config.TrainConfig` (trained by
:class:`~xmcviz.core.trainer.Trainer`) or a first-label
:class:`~xmcviz.softmax.trainer.SoftmaxConfig` (:class:`~xmcviz.softmax.trainer.SoftmaxTrainer`);
both share the loop of :mod:`xmcviz.core.loop`, so their records reach the figures the same way.
Every run gets fresh hooks built from the ``hooks`` spec (:func:`xmcviz.hooks.make_hooks`)
plus a :class:`~xmcviz.hooks.MetricsLog`; their records reach the run's
:class:`~xmcviz.notebook.live.LiveData` through the hooks' subscribers, and every record gives the
figures a chance to redraw.  All figures share one :class:`~xmcviz.notebook.live.Throttle`, so
drawing stays within ``budget`` of the wall-clock time whatever the number of figures.
Datasets are loaded once per ``(data, data_seed)`` and shared between runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import plotly.graph_objects as go

from ..hooks import MetricsLog, make_hooks
from .live import LiveData, LiveFigure, Throttle
from .plots import figure_data
from ..core.rundir import atomic_write_bytes
from ..core.rundir import RESULTS_FILE, json_safe  # results.json: the contract with `xmcviz sweep`
from ..core.loop import TrainingLoop, load_dataset
from ..core.trainer import TrainConfig, Trainer
from ..softmax.trainer import SoftmaxConfig, SoftmaxTrainer

RunConfig = TrainConfig | SoftmaxConfig


@dataclass
class RunResult:
    """One finished (or running) run: its settings, evaluations and instrument records."""

    label: str
    config: RunConfig
    data: LiveData = field(default_factory=LiveData)
    history: list[dict] = field(default_factory=list)
    num_labels: int | None = None
    steps_per_epoch: int | None = None
    train_time_s: float | None = None
    wall_time_s: float | None = None
    finished: bool = False
    trainer: TrainingLoop | None = None  # kept after the run with Experiment(keep_trainers=True)

    @property
    def final(self) -> dict:
        """The last evaluation record (empty before the first evaluation)."""
        return dict(self.history[-1]) if self.history else {}


class Experiment:
    """Run labelled configs (:class:`TrainConfig` or :class:`SoftmaxConfig`) one after another
    with shared live figures.

    ``hooks``: a :func:`make_hooks` spec for every run (e.g. ``"grad:5,ranks:2,freq"``; step
    hooks apply to multi-label runs only).  ``live``: draw figures (False: build them only, e.g.
    in tests).  ``min_interval`` / ``budget``: the shared redraw throttle (seconds between
    redraws, share of time).  ``keep_trainers``: keep each finished run's trainer in
    :attr:`RunResult.trainer` (its final parameters, e.g. for probes after training; memory).
    """

    def __init__(self, hooks: str = "", *, live: bool = True, min_interval: float = 1.0,
                 budget: float = 0.03, keep_trainers: bool = False) -> None:
        make_hooks(hooks)  # validate the spec now, not at the first run
        self.hooks = hooks
        self.keep_trainers = bool(keep_trainers)
        self.live = live
        self.throttle = Throttle(min_interval, budget)
        self.figures: dict[str, LiveFigure] = {}
        self.runs: dict[str, RunResult] = {}
        self._datasets: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ figures
    def add_figure(self, name: str, build: Callable[["Experiment"], go.Figure],
                   output=None) -> LiveFigure:
        """Register a figure rebuilt by ``build(experiment)``; ``output``: an ipywidgets.Output
        to draw into (see :class:`LiveFigure`).  Not displayed until :meth:`show`/a redraw."""
        if name in self.figures:
            raise ValueError(f"figure name {name!r} is already used: allowed a new name")
        fig = LiveFigure(lambda: build(self), display=self.live, output=output,
                         throttle=self.throttle)
        self.figures[name] = fig
        return fig

    def show(self) -> None:
        """Draw every figure now (in the current cell: creates the display handles)."""
        for fig in self.figures.values():
            fig.show()

    def update(self) -> bool:
        """Redraw every figure if the shared throttle allows; return whether it drew."""
        if not self.figures or not self.throttle.due():
            return False
        for fig in self.figures.values():
            fig.draw()
        return True

    def finish(self) -> dict[str, go.Figure]:
        """Draw the final state of every figure (unthrottled) and return the figures."""
        return {name: fig.finish() for name, fig in self.figures.items()}

    # ------------------------------------------------------------------ runs
    def dataset(self, config: RunConfig):
        """The dataset ``config`` names, loaded once per ``(data, train, test, data_seed)``."""
        key = (config.data, config.train, config.test, config.data_seed)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(config)
        return self._datasets[key]

    def run(self, label: str, config: RunConfig, dataset=None) -> RunResult:
        """Train ``config`` under ``label`` (a new label, or one whose run failed): a
        :class:`TrainConfig` with :class:`Trainer`, a :class:`SoftmaxConfig` with
        :class:`SoftmaxTrainer`."""
        if not isinstance(config, (TrainConfig, SoftmaxConfig)):
            raise TypeError(f"config={type(config).__name__}: allowed TrainConfig or SoftmaxConfig")
        if label in self.runs and self.runs[label].finished:
            raise ValueError(f"run label {label!r} is already used: allowed a new label")
        ds = self.dataset(config) if dataset is None else dataset
        result = RunResult(label=label, config=config)
        hooks = make_hooks(self.hooks) + [MetricsLog()]
        for h in hooks:
            h.subscribe(result.data.sink(h.name))
        result.data.on_record(lambda key, record: self.update())
        make = SoftmaxTrainer if isinstance(config, SoftmaxConfig) else Trainer
        trainer: TrainingLoop = make(config, dataset=ds, hooks=hooks)
        result.num_labels = int(trainer.num_labels)
        result.steps_per_epoch = int(trainer.steps_per_epoch)
        self.runs[label] = result  # visible to the figures while it trains
        t0 = time.perf_counter()
        trainer.train()
        result.wall_time_s = time.perf_counter() - t0
        result.train_time_s = float(trainer.time_s)
        result.history = [dict(r) for r in trainer.history]
        result.trainer = trainer if self.keep_trainers else None
        result.finished = True
        self.update()
        return result

    def run_all(self, configs: Mapping[str, RunConfig]) -> dict[str, RunResult]:
        """:meth:`run` every ``label -> config`` in order, then :meth:`finish`."""
        for label, cfg in configs.items():
            self.run(label, cfg)
        self.finish()
        return self.runs

    # ------------------------------------------------------------------ data for figures
    @property
    def num_labels(self) -> int | None:
        """L of the latest run (None before any run)."""
        return next(reversed(self.runs.values())).num_labels if self.runs else None

    def metrics(self) -> dict[str, pd.DataFrame]:
        """Evaluation records per run label, as they arrive (``P@k``, ``step``, ``time_s``...)."""
        return {label: r.data.frame("metrics") for label, r in self.runs.items()}

    def frames(self, hook: str) -> dict[str, pd.DataFrame]:
        """The scalar records of ``hook`` (e.g. ``"grad"``) per run label."""
        return {label: r.data.frame(hook) for label, r in self.runs.items()}

    def records(self, hook: str) -> dict[str, pd.DataFrame]:
        """The per-item records of ``hook`` (e.g. one row per negative for ``"ranks"``)."""
        return {label: r.data.records(hook) for label, r in self.runs.items()}

    def summary(self, settings: tuple[str, ...] = ("model", "sampler")) -> pd.DataFrame:
        """One row per run: ``label``, the config ``settings``, final metrics, ``time_s``."""
        rows = []
        for label, r in self.runs.items():
            cfg = r.config.to_dict()
            final = {k: v for k, v in r.final.items() if k not in ("epoch", "step", "time_s", "eval_s")}
            rows.append({"label": label, **{s: cfg.get(s) for s in settings}, **final,
                         "time_s": r.train_time_s})
        return pd.DataFrame(rows)

    def draw_stats(self) -> dict[str, float]:
        """What drawing cost: ``live_draw_s`` (throttled redraws while training) and its share
        of the elapsed time ``draw_fraction``; ``draw_s`` / ``draws`` count every draw."""
        figs = self.figures.values()
        elapsed = self.throttle.elapsed()
        return {"live_draw_s": self.throttle.seconds, "draw_s": sum(f.draw_seconds for f in figs),
                "draws": sum(f.draws for f in figs), "elapsed_s": elapsed,
                "draw_fraction": self.throttle.seconds / elapsed if elapsed > 0 else 0.0}

    # ------------------------------------------------------------------ results
    def results(self, **extra: Any) -> dict:
        """A JSON-able dict: ``final`` (metrics and training time per run), ``runs``
        (config and evaluation history), ``figures`` (each figure's traces) and ``live``
        (drawing cost); ``extra`` keys are added at the top level."""
        final = {label: {**{k: v for k, v in r.final.items() if k not in ("epoch", "step")},
                         "train_time_s": r.train_time_s}
                 for label, r in self.runs.items()}
        runs = {label: {"config": r.config.to_dict(), "history": r.history,
                        "num_labels": r.num_labels, "steps_per_epoch": r.steps_per_epoch,
                        "wall_time_s": r.wall_time_s}
                for label, r in self.runs.items()}
        figures = {}
        for name, f in self.figures.items():
            fig = f.figure if f.figure is not None else f.build()
            figures[name] = figure_data(fig)
        out = {"final": final, "runs": runs, "figures": figures, "live": self.draw_stats()}
        out.update(extra)
        return json_safe(out)

    def write(self, output_dir: str | Path, **extra: Any) -> Path:
        """Write :meth:`results` to ``output_dir/results.json`` (created if needed)."""
        d = Path(output_dir)
        d.mkdir(parents=True, exist_ok=True)
        path = d / RESULTS_FILE
        atomic_write_bytes(path, json.dumps(self.results(**extra), indent=1,
                                            allow_nan=False).encode())
        return path
