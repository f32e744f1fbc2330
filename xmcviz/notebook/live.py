"""Live figures in a notebook: redrawn in place while a run trains, throttled.

The pattern works both in JupyterLab and headless under papermill: a figure
is shown once as a raw mime bundle with ``display_id=True`` and later updated
through that handle.  The bundle carries the plotly mime type (an interactive
chart in JupyterLab) and an HTML div (for nbconvert's HTML export and plain
notebook viewers), so the saved notebook holds exactly one output per figure,
the final one, and no widget state.  Call :func:`setup_notebook` once first.

Drawing is throttled: at most one redraw per ``min_interval`` seconds and, over
the run, at most ``budget`` of the elapsed time spent drawing.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio


def setup_notebook(plotlyjs: str = "embed") -> None:
    """Prepare the notebook for figures that also render in HTML exports.

    ``plotlyjs="embed"`` stores plotly.js once in the notebook (renders offline,
    about 4.5 MB); ``"cdn"`` loads it from the plotly CDN when viewed (small files).
    """
    if plotlyjs not in ("embed", "cdn"):
        raise ValueError(f"plotlyjs={plotlyjs!r} is not supported: allowed ['cdn', 'embed']")
    name = "notebook" if plotlyjs == "embed" else "notebook_connected"
    pio.renderers.default = f"plotly_mimetype+{name}"
    pio.renderers[name].activate()
    mime_bundle(go.Figure())  # pay plotly's one-time template/validator loading now, not mid-run


def mime_bundle(fig: go.Figure) -> dict:
    """The figure as a mime bundle: plotly JSON for JupyterLab plus an HTML div."""
    from plotly.io._utils import validate_coerce_fig_to_dict

    fig_dict = validate_coerce_fig_to_dict(fig, True)
    bundle = dict(pio.renderers["plotly_mimetype"].to_mimebundle(fig_dict))
    bundle.update(pio.renderers["notebook"].to_mimebundle(fig_dict))
    return bundle


class Throttle:
    """Decides when a redraw is due: at most one per ``min_interval`` seconds and, since
    creation, at most ``budget`` of the elapsed time spent drawing (``spent`` records it)."""

    def __init__(self, min_interval: float = 1.0, budget: float = 0.03) -> None:
        if min_interval < 0:
            raise ValueError(f"min_interval={min_interval!r} is out of range: allowed >= 0")
        if not 0 < budget <= 1:
            raise ValueError(f"budget={budget!r} is out of range: allowed (0, 1]")
        self.min_interval = min_interval
        self.budget = budget
        self.seconds = 0.0
        self._t0 = time.perf_counter()
        self._last = -float("inf")

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self._last < self.min_interval:
            return False
        return self.seconds <= self.budget * (now - self._t0)

    def spent(self, seconds: float, count: bool = True) -> None:
        """Record a draw that just ended and took ``seconds``; ``count=False`` for draws that
        are not live updates (the first and the final one), which only restart the interval."""
        if count:
            self.seconds += seconds
        self._last = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


class LiveFigure:
    """A figure rebuilt from ``build()`` and redrawn in place, throttled.

    ``update()`` is cheap to call on every record: it redraws only when due.
    ``finish()`` always draws the final state.  ``draws`` and ``draw_seconds``
    say what the figure cost.

    ``output``: an ``ipywidgets.Output`` to draw into instead of the current
    cell (needed when training starts from a button callback, whose outputs
    belong to no cell); each draw replaces the widget's content.  ``throttle``:
    share one :class:`Throttle` between several figures (one time budget).
    """

    def __init__(self, build: Callable[[], go.Figure], min_interval: float = 1.0, budget: float = 0.03,
                 display: bool = True, output=None, throttle: Throttle | None = None) -> None:
        self.throttle = throttle if throttle is not None else Throttle(min_interval, budget)
        self.build = build
        self.display_enabled = display
        self.output = output
        self.handle = None
        self.figure: go.Figure | None = None
        self.draws = 0
        self.draw_seconds = 0.0

    def show(self) -> "LiveFigure":
        """Draw now (the first display; not counted in the live-update budget)."""
        self.draw(live=False)
        return self

    def update(self) -> bool:
        """Redraw if the throttle allows; return whether it drew."""
        if not self.throttle.due():
            return False
        self.draw()
        return True

    def finish(self) -> go.Figure:
        """Draw the final state (always; not counted in the live-update budget)."""
        self.draw(live=False)
        return self.figure

    def draw(self, live: bool = True) -> None:
        """Rebuild and redraw now; ``live``: count the time in the throttle's budget."""
        t = time.perf_counter()
        self.figure = self.build()
        if self.display_enabled:
            from IPython.display import display

            bundle = mime_bundle(self.figure)
            if self.output is not None:
                with self.output:
                    self.output.clear_output(wait=True)
                    display(bundle, raw=True)
            elif self.handle is None:
                self.handle = display(bundle, raw=True, display_id=True)
            else:
                self.handle.update(bundle, raw=True)
        dt = time.perf_counter() - t
        self.throttle.spent(dt, count=live)
        self.draws += 1
        self.draw_seconds += dt


class LiveData:
    """Collects hook records as they are published, keyed by a name.

    ``hook.subscribe(data.sink("ranks"))`` and later ``data.frame("ranks")`` (the
    scalar records) or ``data.records("ranks")`` (the binary per-item records,
    e.g. one row per negative, as a DataFrame with source names).
    """

    def __init__(self) -> None:
        self._scalars: dict[str, list[dict]] = defaultdict(list)
        self._arrays: dict[str, list[np.ndarray]] = defaultdict(list)
        self._listeners: list[Callable[[str, dict], None]] = []

    def sink(self, key: str) -> Callable[[dict], None]:
        def receive(record: dict) -> None:
            arrays = {k: v for k, v in record.items() if k.startswith("array")}
            self._scalars[key].append({k: v for k, v in record.items() if k not in arrays})
            for a in arrays.values():
                self._arrays[key].append(a)
            for cb in self._listeners:
                cb(key, record)
        return receive

    def on_record(self, callback: Callable[[str, dict], None]) -> None:
        """Call ``callback(key, record)`` after each record is stored (e.g. to update figures)."""
        self._listeners.append(callback)

    def frame(self, key: str) -> pd.DataFrame:
        return pd.DataFrame(self._scalars.get(key, []))

    def records(self, key: str) -> pd.DataFrame:
        from ..core.run_reader import with_source_names

        parts = self._arrays.get(key)
        if not parts:
            return pd.DataFrame()
        if len(parts) > 1:  # keep the join: a redraw then only joins what arrived since
            parts[:] = [np.concatenate(parts)]
        return with_source_names(pd.DataFrame(parts[0]))
