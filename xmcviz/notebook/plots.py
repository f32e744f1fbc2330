"""Plotly figure builders for every instrument.

Each builder takes tidy data (the DataFrames of :func:`xmcviz.load_run`, or the
same columns accumulated live) keyed by a run label, and returns a
``plotly.graph_objects.Figure``.  One colour per sampler across all figures
(:func:`colour_for` matches the sampler name inside the label), titled axes
with units, legends named after the runs.
"""
from __future__ import annotations

import zlib
from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .analysis import PHASES, log_rank_edges, rank_phases, uniform_rank_expectation

SAMPLER_COLOURS = {
    "full": "#7f7f7f", "uniform": "#1f77b4", "frequency": "#9467bd", "top-uniform": "#ff7f0e",
    "top": "#8c564b", "mips-a": "#d62728", "mips-s": "#2ca02c", "adversarial": "#17becf",
    "nce": "#bcbd22", "linear": "#e377c2", "top-re": "#e7ba52",
}
_FALLBACK = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")
PHASE_DASH = {"first": "solid", "middle": "dash", "last": "dot"}
# Runs that share a sampler (hence a colour) are told apart by dash style, in order of appearance.
RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def colour_for(label: str) -> str:
    """The sampler's colour when ``label`` names one (longest match wins), else a stable fallback."""
    low = label.lower()
    hits = [k for k in SAMPLER_COLOURS if k in low]
    if hits:
        return SAMPLER_COLOURS[max(hits, key=len)]
    return _FALLBACK[zlib.crc32(label.encode()) % len(_FALLBACK)]


def run_styles(labels) -> dict[str, dict]:
    """Line style per run label: the sampler's colour, and a dash style that differs between
    runs of the same colour (e.g. one sampler at several refresh intervals)."""
    seen: dict[str, int] = {}
    out = {}
    for label in labels:
        c = colour_for(label)
        out[label] = dict(color=c, dash=RUN_DASHES[seen.get(c, 0) % len(RUN_DASHES)])
        seen[c] = seen.get(c, 0) + 1
    return out


def figure_data(fig: go.Figure) -> list[dict]:
    """The traces of ``fig`` as plain JSON-able lists (name, type, x, y), for results files."""
    out = []
    for t in fig.data:
        d = {"name": t.name, "type": t.type}
        for axis in ("x", "y"):
            v = getattr(t, axis, None)
            if v is not None:
                d[axis] = [x.item() if isinstance(x, np.generic) else x for x in np.asarray(v).tolist()]
        out.append(d)
    return out


def _layout(fig: go.Figure, title: str, x: str, y: str, **kw) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      legend_title_text="run", margin=dict(l=60, r=20, t=50, b=50), **kw)
    return fig


def metric_curves(metrics: Mapping[str, pd.DataFrame], metric: str = "P@5", x: str = "epoch") -> go.Figure:
    """``metric`` (e.g. P@5, PSP@5) against ``x`` ("epoch", "step" or "time_s") per run."""
    fig = go.Figure()
    styles = run_styles(metrics)
    for label, df in metrics.items():
        if len(df) and metric in df and x in df:
            fig.add_scatter(x=df[x], y=df[metric], mode="lines+markers", name=label,
                            line=styles[label])
    xt = {"epoch": "epoch", "step": "training step", "time_s": "training time (s)"}.get(x, x)
    return _layout(fig, f"{metric} on the test set", xt, f"{metric} (fraction)")


def gradient_ratio(grad: Mapping[str, pd.DataFrame], full: bool = True) -> go.Figure:
    """Median ||g-|| / ||g+|| over the probe rows against step (log y); dotted: all negatives."""
    fig = go.Figure()
    styles = run_styles(grad)
    for label, df in grad.items():
        if not len(df):
            continue
        c = styles[label]["color"]
        fig.add_scatter(x=df["step"], y=df["ratio"], mode="lines", name=label, line=styles[label])
        if full and "ratio_full" in df:
            fig.add_scatter(x=df["step"], y=df["ratio_full"], mode="lines", name=f"{label} (full loss)",
                            line=dict(color=c, dash="dot", width=1), opacity=0.6)
    fig.update_yaxes(type="log")
    return _layout(fig, "Gradient dominance: negative vs positive term", "training step",
                   "||g-|| / ||g+|| (median over probe rows)")


def gradient_cosine(grad: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Cosine between the sampled gradient and the full-loss gradient, against step."""
    fig = go.Figure()
    styles = run_styles(grad)
    for label, df in grad.items():
        if len(df):
            fig.add_scatter(x=df["step"], y=df["cos_sampled_full"], mode="lines", name=label,
                            line=styles[label])
    fig.update_yaxes(range=[-1.05, 1.05])
    return _layout(fig, "How close the sampled gradient is to the full one", "training step",
                   "cos(sampled gradient, full gradient)")


SCORE_MEANS = (("sig_pos", "positives", "solid"), ("sig_neg", "sampled negatives", "dash"),
               ("sig_all", "all labels", "dot"))


def score_trajectories(grad: Mapping[str, pd.DataFrame]) -> go.Figure:
    """One panel per run: the median over the probe rows of mean sigma(f_j) over the positives
    (solid), the sampled negatives (dashed) and all labels (dotted), against step.  Three
    lines that stay together at sigma(bias) mean the model scores every label alike."""
    runs = [label for label, df in grad.items() if len(df) and "sig_all" in df]
    fig = make_subplots(rows=1, cols=max(1, len(runs)), shared_yaxes=True,
                        subplot_titles=runs or None, horizontal_spacing=0.02)
    styles = run_styles(grad)
    for i, label in enumerate(runs, start=1):
        df = grad[label]
        for key, what, dash in SCORE_MEANS:
            fig.add_scatter(x=df["step"], y=df[key], mode="lines", name=f"{label}: {what}",
                            line=dict(color=styles[label]["color"], dash=dash), row=1, col=i)
    fig.update_yaxes(range=[0, 1])
    fig.update_annotations(font_size=11)
    return _layout(fig, "Mean sigma(f_j) over positives (solid), sampled negatives (dashed), "
                   "all labels (dotted)", "training step", "mean sigma(f_j) (median over probe rows)")


def dead_embeddings(grad: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Fraction of probe rows whose embedding E_x is exactly zero (every ReLU unit off: no
    gradient reaches the network through them), against step."""
    fig = go.Figure()
    styles = run_styles(grad)
    for label, df in grad.items():
        if len(df) and "dead_fraction" in df:
            fig.add_scatter(x=df["step"], y=df["dead_fraction"], mode="lines", name=label,
                            line=styles[label])
    fig.update_yaxes(range=[-0.02, 1.02])
    return _layout(fig, "Dead embeddings: rows with E_x = 0", "training step",
                   "fraction of probe rows with E_x = 0")


def rank_histogram(ranks: Mapping[str, pd.DataFrame], num_labels: int, bins: int = 30,
                   by_phase: bool = False) -> go.Figure:
    """Histogram of true ranks (log rank axis) per run, with the uniform expectation.

    With ``by_phase``, one curve per phase of the refresh interval (first,
    middle, last logged step; dash style) for each run.
    """
    edges = log_rank_edges(num_labels, bins)
    centres = np.sqrt(edges[:-1] * edges[1:])
    fig = go.Figure()
    for label, df in ranks.items():
        if not len(df):
            continue
        groups = [(label, df, "solid")]
        if by_phase:
            ph = rank_phases(df)
            groups = [(f"{label}, {p} step", df[ph == p], PHASE_DASH[p]) for p in PHASES if (ph == p).any()]
        for name, g, dash in groups:
            h, _ = np.histogram(g["rank"].to_numpy(), bins=edges)
            fig.add_scatter(x=centres, y=h / max(h.sum(), 1), mode="lines+markers", name=name,
                            line=dict(color=colour_for(label), dash=dash, shape="hvh"))
    fig.add_scatter(x=centres, y=uniform_rank_expectation(edges, num_labels), mode="lines",
                    name="uniform expectation", line=dict(color="black", dash="dash", width=1))
    fig.update_xaxes(type="log")
    return _layout(fig, "True rank of the negatives in the loss (1 = hardest)",
                   f"rank among all {num_labels} labels (log scale)", "fraction of negatives")


def label_frequency_curve(counts: Mapping[str, np.ndarray], top: int | None = None) -> go.Figure:
    """Sorted per-label negative-draw counts (most drawn first), log-log, per run/window."""
    fig = go.Figure()
    for label, c in counts.items():
        c = np.sort(np.asarray(c))[::-1]
        c = c[c > 0][:top]
        if c.size:
            fig.add_scatter(x=np.arange(1, c.size + 1), y=c / c.sum(), mode="lines", name=label,
                            line=dict(color=colour_for(label)))
    fig.update_xaxes(type="log")
    fig.update_yaxes(type="log")
    return _layout(fig, "How concentrated the negatives are", "label, most drawn first (log scale)",
                   "share of negative draws (log scale)")


def label_frequency_bars(labels: np.ndarray, counts: np.ndarray, name: str = "MIPS negatives") -> go.Figure:
    """Bar chart of one mini-batch's negatives per label, most drawn first (see
    docs/background.md, section "Label concentration")."""
    order = np.argsort(-counts, kind="stable")
    fig = go.Figure(go.Bar(x=[str(int(v)) for v in labels[order]], y=counts[order], name=name,
                           marker_color=colour_for(name)))
    fig.update_xaxes(type="category")
    return _layout(fig, f"Label distribution of {name} in one mini-batch", "label id (most drawn first)",
                   "times drawn")


def staleness_recall(stale: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Recall of the MIPS index's top-k against exact top-k under the current W, vs steps since refresh."""
    fig = go.Figure()
    for label, df in stale.items():
        if not len(df):
            continue
        g = df.groupby("steps_since_refresh", as_index=False)[["recall", "overlap_snapshot"]].mean()
        c = colour_for(label)
        fig.add_scatter(x=g["steps_since_refresh"], y=g["recall"], mode="lines+markers", name=f"{label}: index vs exact",
                        line=dict(color=c))
        fig.add_scatter(x=g["steps_since_refresh"], y=g["overlap_snapshot"], mode="lines", line=dict(color=c, dash="dot"),
                        name=f"{label}: snapshot W^h vs current W")
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, "Index staleness", "steps since the last index refresh", "recall@k (fraction)")


def interval_sensitivity(table: pd.DataFrame, interval: str, metric: str = "P@5", time: str = "time_s",
                         by: str = "sampler") -> go.Figure:
    """Final ``metric`` and training time against the refresh interval, one line per ``by`` value."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"final {metric}", "training time"))
    for key, g in table.groupby(by):
        g = g.sort_values(interval)
        c = colour_for(str(key))
        fig.add_scatter(x=g[interval], y=g[metric], mode="lines+markers", name=str(key), line=dict(color=c),
                        legendgroup=str(key), row=1, col=1)
        fig.add_scatter(x=g[interval], y=g[time], mode="lines+markers", name=str(key), line=dict(color=c),
                        legendgroup=str(key), showlegend=False, row=1, col=2)
    fig.update_xaxes(title_text=interval)
    fig.update_yaxes(title_text=f"{metric} (fraction)", row=1, col=1)
    fig.update_yaxes(title_text="seconds", row=1, col=2)
    fig.update_layout(template="plotly_white", title="Sensitivity to the refresh interval", legend_title_text=by)
    return fig
