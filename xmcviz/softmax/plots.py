"""Figures of the first-label softmax experiments (adversarial vs uniform, frequency, NCE).

Builders take plain data (a DataFrame of evaluation records per run, dicts of final
records, SNR records) and return ``plotly.graph_objects.Figure`` objects; colours follow
:data:`xmcviz.notebook.plots.SAMPLER_COLOURS`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..notebook.plots import colour_for
from ..validation import check_choice

X_AXES = {"time_s": "training time (s)", "step": "step", "epoch": "epoch"}
METRICS = {"acc": "accuracy (P@1)", "loglik": "log-likelihood per test row"}


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", legend_title_text="run",
                      margin=dict(l=60, r=20, t=60, b=50), **kw)
    return fig


def learning_curves(histories: Mapping[str, pd.DataFrame], x: str = "time_s",
                    metrics: Sequence[str] = ("acc", "loglik"), aux: bool = True) -> go.Figure:
    """One panel per metric (``acc``, ``loglik``) against ``x`` (time_s, step, epoch), a line
    per run; ``aux`` adds the auxiliary tree's own value as a dotted line where a run has
    one (``*_aux`` of a tree proposal)."""
    check_choice("x", x, tuple(X_AXES))
    for m in metrics:
        check_choice("metric", m, tuple(METRICS))
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[METRICS[m] for m in metrics])
    aux_done = set()
    for name, df in histories.items():
        if df is None or len(df) == 0:
            continue
        col = colour_for(name)
        for j, m in enumerate(metrics, start=1):
            fig.add_trace(go.Scatter(x=df[x], y=df[m], mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=j == 1, line=dict(color=col),
                                     marker=dict(size=4)), row=1, col=j)
            is_tree = any(k in name for k in ("adversarial", "nce"))
            if aux and is_tree and f"{m}_aux" in df and m not in aux_done:
                aux_done.add(m)
                fig.add_trace(go.Scatter(x=[df[x].min(), df[x].max()], y=[df[f"{m}_aux"].iloc[-1]] * 2,
                                         mode="lines", name="tree p_n alone", legendgroup="aux",
                                         showlegend=m == metrics[0],
                                         line=dict(color="black", dash="dot")), row=1, col=j)
    for j in range(1, len(metrics) + 1):
        fig.update_xaxes(title_text=X_AXES[x], row=1, col=j)
    return _layout(fig, f"first-label softmax: test metrics against {X_AXES[x]}")


def bias_removal_bars(final: Mapping[str, Mapping[str, float]], metric: str = "acc") -> go.Figure:
    """Grouped bars per run: ``metric`` of the method's predictor (bias removed:
    xi + log q; xi for NCE), of the raw scores xi, and of the proposal alone."""
    check_choice("metric", metric, tuple(METRICS))
    names = list(final)
    fig = go.Figure()
    for suffix, label, pattern in (("", "predictor (bias removed)", ""), ("_raw", "raw scores xi", "/"),
                                   ("_aux", "proposal q alone", ".")):
        fig.add_trace(go.Bar(x=names, y=[final[n].get(metric + suffix) for n in names], name=label,
                             marker=dict(color=[colour_for(n) for n in names], pattern_shape=pattern,
                                         line=dict(color="black", width=0.5))))
    return _layout(fig, f"effect of bias removal: final {METRICS[metric]}", barmode="group",
                   yaxis_title=METRICS[metric])


def snr_bars(snr: Mapping[str, Sequence[Mapping]], value: str = "snr") -> go.Figure:
    """Gradient SNR (``value``: snr or snr_debiased) per sampler, grouped by the point where
    it was measured (keys of ``snr``, e.g. init_raw, uniform_final_debiased); log scale."""
    check_choice("value", value, ("snr", "snr_debiased", "total_variance", "mean_sq_norm"))
    fig = go.Figure()
    samplers = []
    for recs in snr.values():
        samplers += [r["sampler"] for r in recs if r["sampler"] not in samplers]
    for s in samplers:
        pts = list(snr)
        ys = [next((r[value] for r in snr[p] if r["sampler"] == s), None) for p in pts]
        fig.add_trace(go.Bar(x=pts, y=ys, name=s, marker_color=colour_for(s)))
    return _layout(fig, f"gradient signal-to-noise ({value}) on a fixed probe batch", barmode="group",
                   yaxis_type="log", yaxis_title=value, xaxis_title="parameters")
