"""Figures of the false-negative instruments: which labels the negatives are (``popularity``)
and how often they are hidden positives (``hidden``).  Same conventions as :mod:`.plots`:
tidy frames keyed by run label in, a plotly figure out, one colour per sampler."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from .plots import _layout, run_styles


def _windows(df: pd.DataFrame, kind: str, source: str | None) -> pd.DataFrame:
    if df is None or not len(df) or "kind" not in df:
        return pd.DataFrame()
    sel = df[df["kind"] == kind]
    if source is not None:
        sel = sel[sel["source"] == source]
    return sel.sort_values("end_step" if "end_step" in sel else "step")


def negative_popularity(frames: Mapping[str, pd.DataFrame], source: str = "mips",
                        kind: str = "refresh") -> go.Figure:
    """Median training-frequency rank of the ``source`` negatives per window (log y; 1 = the most
    frequent label), one line per run; dotted: the same for the run's positives."""
    fig = go.Figure()
    styles = run_styles(frames)
    for label, df in frames.items():
        w = _windows(df, kind, source)
        if len(w):
            fig.add_scatter(x=w["end_step"], y=w["median_freq_rank"], mode="lines+markers",
                            name=f"{label}: {source} negatives", line=styles[label])
        p = _windows(df, kind, "positives")
        if len(p):
            fig.add_scatter(x=p["end_step"], y=p["median_freq_rank"], mode="lines",
                            name=f"{label}: positives", opacity=0.6,
                            line=dict(color=styles[label]["color"], dash="dot", width=1))
    fig.update_yaxes(type="log", autorange="reversed")
    per = "refresh interval" if kind == "refresh" else "window"
    return _layout(fig, f"How popular the {source.upper()} negatives are, per {per}",
                   f"training step (end of the {per})", "median training-frequency rank (1 = most frequent)")


def head_share(frames: Mapping[str, pd.DataFrame], source: str = "mips", kind: str = "refresh") -> go.Figure:
    """Share of the ``source`` negatives that are head labels (the most frequent labels holding
    the first third of the training positives), per window."""
    fig = go.Figure()
    styles = run_styles(frames)
    for label, df in frames.items():
        w = _windows(df, kind, source)
        if len(w):
            fig.add_scatter(x=w["end_step"], y=w["head"], mode="lines+markers", name=label,
                            line=styles[label])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, f"Head labels among the {source.upper()} negatives", "training step",
                   "share of draws that are head labels")


def hidden_share(frames: Mapping[str, pd.DataFrame], kind: str = "steps") -> go.Figure:
    """Per run and source, the share of sampled negatives that are hidden positives of their row,
    against step; dotted: the share a uniform draw of the same size would hit (base rate)."""
    fig = go.Figure()
    styles = run_styles(frames)
    for label, df in frames.items():
        w = _windows(df, kind, None)
        if not len(w):
            continue
        for src, g in w[w["source"] != "all"].groupby("source", sort=True):
            fig.add_scatter(x=g["end_step"], y=g["share"], mode="lines+markers", name=f"{label}: {src}",
                            line=dict(color=styles[label]["color"],
                                      dash="solid" if src != "uniform" else "dash"))
        a = w[w["source"] == "all"]
        fig.add_scatter(x=a["end_step"], y=a["base_share"], mode="lines", name=f"{label}: base rate",
                        opacity=0.6, line=dict(color=styles[label]["color"], dash="dot", width=1))
    return _layout(fig, "Negatives that are hidden positives (false negatives)", "training step",
                   "share of the sampled negatives")


def hidden_recall(frames: Mapping[str, pd.DataFrame], k: int = 10) -> go.Figure:
    """Recall@k of the hidden positives (visible positives excluded from the ranking) at each
    evaluation, per run."""
    fig = go.Figure()
    styles = run_styles(frames)
    col = f"recall@{k}"
    for label, df in frames.items():
        e = _windows(df, "eval", None)
        if len(e) and col in e:
            e = e.sort_values("step")
            fig.add_scatter(x=e["step"], y=e[col], mode="lines+markers", name=label, line=styles[label])
    fig.update_yaxes(rangemode="tozero")
    return _layout(fig, f"How well the model ranks the positives it never saw (recall@{k})",
                   "training step", f"recall@{k} of the hidden positives")
