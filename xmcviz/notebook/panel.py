"""A teaching panel: ipywidgets controls, a Train button and live figures (the tour notebook).

Clicking Train reads the controls, asks ``make_run(values)`` for a ``(label, TrainConfig)``
and trains it in an :class:`~xmcviz.notebook.experiment.Experiment`; every click adds a run, so the
figures compare the settings tried so far.  Training runs in the kernel inside the button
callback; outputs of a callback belong to no cell, so each figure draws into its own
``ipywidgets.Output`` (redrawn in place, throttled).

``inline=True`` is for headless runs (papermill), where nobody clicks and widget state is not
saved: the figures are plain display handles in the cell that calls ``panel.train()``, so the
saved notebook holds them as static plotly outputs.  (nbclient also fails on Output widgets
when told not to store widget state, another reason to keep them out of headless runs.)
Figures are first drawn by the first run, never at construction.
"""
from __future__ import annotations

import html
import traceback
from typing import Callable, Mapping

import plotly.graph_objects as go

from .experiment import Experiment, RunResult
from ..core.trainer import TrainConfig


class TrainPanel:
    """Controls + Train button + live figures; ``widget`` is what to display.

    ``controls``: name -> an ipywidgets value widget (its ``value`` goes to ``make_run``).
    ``figures``: name -> ``build(experiment)`` (see :mod:`xmcviz.notebook.views`).  ``hooks``: the
    instruments' :func:`~xmcviz.hooks.make_hooks` spec.  ``live``: draw (False in tests).
    ``inline``: draw in the calling cell instead of in Output widgets (see the module doc).
    """

    def __init__(self, controls: Mapping[str, object],
                 make_run: Callable[[dict], tuple[str, TrainConfig]],
                 figures: Mapping[str, Callable[[Experiment], go.Figure]], hooks: str = "",
                 title: str = "", live: bool = True, inline: bool = False,
                 min_interval: float = 1.0, budget: float = 0.03) -> None:
        import ipywidgets as w

        if not figures:
            raise ValueError("figures={} is empty: allowed at least one figure builder")
        self.controls = dict(controls)
        self.make_run = make_run
        self.experiment = Experiment(hooks, live=live, min_interval=min_interval, budget=budget)
        self.outputs = {} if inline else {name: w.Output() for name in figures}
        for name, build in figures.items():
            self.experiment.add_figure(name, build, output=self.outputs.get(name))
        self.button = w.Button(description="Train", button_style="primary", icon="play",
                               tooltip="train with these settings (adds a run to the figures)")
        self.status = w.HTML(value="")
        self.errors: list[str] = []
        self.button.on_click(self._on_click)
        parts = [w.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        parts += [w.HBox(list(self.controls.values()), layout=w.Layout(flex_flow="row wrap")),
                  w.HBox([self.button, self.status]), *self.outputs.values()]
        self.widget = w.VBox(parts)

    def values(self) -> dict:
        """The controls' current values by name."""
        return {name: c.value for name, c in self.controls.items()}

    def _unique(self, label: str) -> str:
        n, out = 2, label
        while out in self.experiment.runs:
            out, n = f"{label} ({n})", n + 1
        return out

    def train(self) -> RunResult:
        """Train one run with the current control values (what the button does)."""
        label, config = self.make_run(self.values())
        label = self._unique(label)
        self.button.disabled = True
        self.status.value = f"training <i>{html.escape(label)}</i> ..."
        try:
            result = self.experiment.run(label, config)
            self.experiment.finish()
        finally:
            self.button.disabled = False
        p5 = result.final.get("P@5")
        self.status.value = (f"<i>{html.escape(label)}</i>: "
                             + (f"P@5 = {p5:.3f}, " if p5 is not None else "")
                             + f"{result.train_time_s:.1f} s of training")
        return result

    def _on_click(self, _button) -> None:
        try:
            self.train()
        except Exception as e:  # a callback's exception would only reach the kernel log
            self.errors.append(traceback.format_exc())
            self.status.value = (f"<span style='color:#d62728'>failed: "
                                 f"{html.escape(type(e).__name__)}: {html.escape(str(e))}</span>")
