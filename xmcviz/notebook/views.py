"""Figures of an :class:`~xmcviz.notebook.experiment.Experiment`, as ``build(experiment)`` functions.

Each takes the experiment (whose runs may still be training) and returns a plotly figure
from :mod:`xmcviz.notebook.plots`; they are what notebooks pass to ``Experiment.add_figure``.  Before
any run has data they return the figure with its titles and no traces.
"""
from __future__ import annotations

import plotly.graph_objects as go

from . import plots, plots_dynamics
from ..softmax import plots as softmax_plots
from .analysis import batch_label_counts, select_interval


def precision(exp, metric: str = "P@5", x: str = "step") -> go.Figure:
    """``metric`` of every run against ``x`` ("step", "epoch" or "time_s")."""
    return plots.metric_curves(exp.metrics(), metric, x=x)


def gradient_ratio(exp) -> go.Figure:
    """||g-|| / ||g+|| of every run (needs the ``grad`` hook)."""
    return plots.gradient_ratio(exp.frames("grad"))


def gradient_cosine(exp) -> go.Figure:
    """Cosine of the sampled and the full-loss gradient of every run (``grad`` hook)."""
    return plots.gradient_cosine(exp.frames("grad"))


def score_trajectories(exp) -> go.Figure:
    """Mean sigma over the positives, the sampled negatives and all labels, one panel per run
    (``grad`` hook)."""
    return plots.score_trajectories(exp.frames("grad"))


def dead_embeddings(exp) -> go.Figure:
    """Fraction of probe rows with E_x = 0 per run (``grad`` hook).  Linear runs are left out:
    their embedding is the fixed input x, which training never changes."""
    frames = {label: df for label, df in exp.frames("grad").items()
              if getattr(exp.runs[label].config, "model", None) != "linear"}
    fig = plots.dead_embeddings(frames)
    fig.update_layout(title="Dead embeddings: rows with E_x = 0 (linear runs left out: their "
                            "E_x is the fixed input)")
    return fig


def rank_histograms(exp, label: str | None = None, interval: int = 0, bins: int = 30) -> go.Figure:
    """True ranks of run ``label``'s negatives (None: the latest run) at the first, middle and
    last logged step of refresh interval ``interval`` (0: the first, -1: the latest), with the
    uniform expectation (``ranks`` hook).  Empty (titled) while that run has not started."""
    if label is None and exp.runs:
        label = next(reversed(exp.runs))
    run = exp.runs.get(label)
    # A run that has not started yet: its titled, empty figure.
    recs = select_interval(run.data.records("ranks"), interval) if run is not None else None
    which = {0: "first refresh interval", -1: "latest refresh interval"}.get(interval, f"refresh interval {interval}")
    L = (run.num_labels if run is not None else exp.num_labels) or 2
    fig = plots.rank_histogram({label: recs} if recs is not None and len(recs) else {},
                               num_labels=L, bins=bins, by_phase=True)
    fig.update_layout(title=f"{label}: true rank of the negatives, {which}")
    return fig


def batch_concentration(exp, source: str = "mips") -> go.Figure:
    """Per run, the labels of the ``source`` negatives of the first logged mini-batch that
    has any (the probe rows of the ``ranks`` hook), most drawn first (see docs/background.md,
    section "Label concentration")."""
    counts = {}
    for label, recs in exp.records("ranks").items():
        step, _, c = batch_label_counts(recs, source)
        if step is not None:
            counts[f"{label} (step {step})"] = c
    fig = plots.label_frequency_curve(counts)
    fig.update_layout(title=f"Labels of one mini-batch's {source.upper()} negatives, right after the switch")
    return fig


def interval_sensitivity(exp, interval: str = "refreshes_per_epoch", metric: str = "P@5") -> go.Figure:
    """Final ``metric`` and training time of every finished run against its ``interval``
    setting (``refreshes_per_epoch`` or ``refresh_every``), one line per sampler."""
    import pandas as pd

    table = exp.summary(settings=("sampler", interval))
    if len(table):  # finished runs that have the setting (e.g. not a uniform baseline)
        table = table[[r.finished for r in exp.runs.values()]]
        table = table[table[interval].notna()]
    if not len(table) or metric not in table:
        table = pd.DataFrame(columns=["sampler", interval, metric, "time_s"])
    return plots.interval_sensitivity(table, interval, metric)


def learning_curves(exp, x: str = "time_s") -> go.Figure:
    """Accuracy and log-likelihood of every first-label softmax run against ``x`` ("time_s",
    "step" or "epoch"); the auxiliary tree's own value dotted where a run has one."""
    return softmax_plots.learning_curves(exp.metrics(), x=x)


def negative_popularity(exp, source: str = "mips") -> go.Figure:
    """Median training-frequency rank of every run's ``source`` negatives per refresh interval,
    beside its positives' (``popularity`` hook)."""
    return plots_dynamics.negative_popularity(exp.frames("popularity"), source)


def head_share(exp, source: str = "mips") -> go.Figure:
    """Share of head labels among every run's ``source`` negatives per refresh interval."""
    return plots_dynamics.head_share(exp.frames("popularity"), source)


def hidden_share(exp) -> go.Figure:
    """Share of every run's negatives that are hidden positives, by source, with the base rate
    (``hidden`` hook; runs with ``hide_labels`` > 0)."""
    return plots_dynamics.hidden_share(exp.frames("hidden"))


def hidden_recall(exp, k: int = 10) -> go.Figure:
    """Recall@k of the hidden positives at every evaluation (``hidden`` hook)."""
    return plots_dynamics.hidden_recall(exp.frames("hidden"), k)
